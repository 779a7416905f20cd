fn main() {
    std::process::exit(zdd::run());
}
