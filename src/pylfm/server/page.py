"""The voice chat page: ``GET /`` and its static files (``/static/...``), shipped in the
package (``pylfm/server/static``): plain HTML and JavaScript, no build step, nothing
fetched from elsewhere. It talks to ``/v1/realtime`` like any other client."""

from pathlib import Path
from typing import Any

STATIC = Path(__file__).resolve().parent / "static"


def add_page_routes(app: Any) -> None:
    from fastapi.responses import FileResponse, Response
    from fastapi.staticfiles import StaticFiles

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", media_type="text/html",
                            headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return Response(status_code=204)
