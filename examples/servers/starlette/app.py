"""A plain Starlette app, served by an unmodified uvicorn: nothing in it
knows about zdd. It answers every path with the release in ./VERSION (and,
for a POST, the size of the body it read)."""

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

with open("VERSION") as f:
    VERSION = f.read().strip()


async def any_path(request):
    if request.method == "POST":
        body = await request.body()
        return PlainTextResponse(f"{VERSION} {len(body)}\n")
    return PlainTextResponse(f"{VERSION}\n")


app = Starlette(routes=[Route("/{path:path}", any_path, methods=["GET", "POST"])])
