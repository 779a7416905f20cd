"""A plain Flask app, served by an unmodified gunicorn: nothing in it knows
about zdd. It answers every path with the release in ./VERSION (and, for a
POST, the size of the body it read)."""

from flask import Flask, request

app = Flask(__name__)

with open("VERSION") as f:
    VERSION = f.read().strip()


@app.route("/", defaults={"path": ""}, methods=["GET", "POST"])
@app.route("/<path:path>", methods=["GET", "POST"])
def any_path(path):
    if request.method == "POST":
        return f"{VERSION} {len(request.get_data())}\n"
    return f"{VERSION}\n"
