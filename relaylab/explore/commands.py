"""`relaylab serve`: the explorer on a Panel server (the same app as `panel serve apps/explorer.py`)."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

NO_PROJECTS = "projects to serve: `relaylab serve PROJECT...`, or RELAYLAB_PROJECTS or VIRELAY_PROJECTS set"


def environment_projects(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The projects a server started without any serves: $RELAYLAB_PROJECTS (paths separated by `os.pathsep`: `:`, or
    `;` on Windows), else $VIRELAY_PROJECTS as ViRelAy 0.6.1's WSGI app reads it (separated by `:` on every system,
    relative paths from the working folder). Empty entries are skipped. When both are set, RELAYLAB_PROJECTS wins and
    VIRELAY_PROJECTS is ignored with a logged warning: it is relaylab's own setting, and the two often name the same
    projects (a ViRelAy project and the store converted from it), whose names would collide if served together."""
    relaylab = [p for p in environ.get("RELAYLAB_PROJECTS", "").split(os.pathsep) if p]
    virelay = [p for p in environ.get("VIRELAY_PROJECTS", "").split(":") if p]
    if relaylab and virelay:
        log.warning("serving the %d projects of RELAYLAB_PROJECTS; VIRELAY_PROJECTS (%d) is ignored while it is set",
                    len(relaylab), len(virelay))
    return relaylab or virelay


def cmd_serve(args: argparse.Namespace) -> int:
    import panel as pn

    from ..data.project import open_projects
    from ..errors import RelaylabError
    from .serve import routes
    from .app import build_app
    from .embedding import warm_up

    projects = args.projects or [Path(p) for p in environment_projects()]
    if not projects:
        raise RelaylabError.at("relaylab serve", "", NO_PROJECTS, "none given")
    for project in open_projects(projects).values():  # every problem is reported before the server starts
        project.close()
    paths = [path.resolve() for path in projects]
    warm_up()
    origins = args.allow_websocket_origin or None
    shown = "localhost" if args.address in ("127.0.0.1", "0.0.0.0", "", None) else args.address
    print(f"relaylab explorer: {len(paths)} project{'s' if len(paths) != 1 else ''} at http://{shown}:{args.port}/",
          flush=True)
    pn.serve({"/": lambda: build_app(paths)}, port=args.port, address=args.address, show=args.show, title="relaylab explorer",
             websocket_origin=origins, extra_patterns=routes(), threaded=False, print=False)
    return 0


def add_commands(commands) -> None:
    serve = commands.add_parser(
        "serve", help="open projects in the explorer (a Panel web app)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serve the explorer for one or more projects, one tab each: the analysis view (embeddings drawn by\n"
                    "Datashader on the server, so millions of points stay interactive; box, lasso and click\n"
                    "selection), the selected samples in a paged grid (input, attribution or overlay, ViRelAy's and\n"
                    "zennit's colour maps), and, for projects that record a model, per-layer inspection.\n\n"
                    "The address bar always holds a share link of the current view; Export/Import save and restore\n"
                    "the view as JSON in ViRelAy's format. The same app runs under\n"
                    "`panel serve apps/explorer.py --args PROJECT...` (for Panel's deployment options).\n\n"
                    "Without PROJECT arguments the projects come from $RELAYLAB_PROJECTS (paths separated by ':', ';' on\n"
                    "Windows), else from $VIRELAY_PROJECTS (ViRelAy's variable: paths separated by ':'); when both are\n"
                    "set, RELAYLAB_PROJECTS is used. Projects are checked before the server starts; problems are\n"
                    "listed and the exit status is 2.")
    serve.add_argument("projects", nargs="*", type=Path, metavar="PROJECT")
    serve.add_argument("--port", type=int, default=5006, help="port to listen on (default: 5006)")
    serve.add_argument("--address", default="127.0.0.1",
                       help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 for every interface)")
    serve.add_argument("--allow-websocket-origin", action="append", metavar="HOST[:PORT]",
                       help="a host browsers may connect from besides localhost (repeatable; needed behind a proxy)")
    serve.add_argument("--show", action=argparse.BooleanOptionalAction, default=True, help="open a browser tab (default: yes)")
    serve.set_defaults(run=cmd_serve)
