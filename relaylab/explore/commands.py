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
    from .data import serve_paths, set_cache_budget
    from .serve import routes
    from .app import build_app
    from .embedding import warm_up

    projects = args.projects or [Path(p) for p in environment_projects()]
    if not projects:
        raise RelaylabError.at("relaylab serve", "", NO_PROJECTS, "none given")
    for project in open_projects(projects).values():  # every problem is reported before the server starts
        project.close()
    paths = [path.resolve() for path in projects]
    set_cache_budget(args.cache_memory * 2**20)
    serve_paths(paths)
    warm_up()
    origins = args.allow_websocket_origin or None
    shown = "localhost" if args.address in ("127.0.0.1", "0.0.0.0", "", None) else args.address
    auth = auth_options(args)
    print(f"relaylab explorer: {len(paths)} project{'s' if len(paths) != 1 else ''} at http://{shown}:{args.port}{args.prefix or ''}/"
          + (" (login required)" if auth else ""), flush=True)
    if args.num_threads:
        pn.config.nthreads = args.num_threads
    pn.serve({"/": lambda: build_app(paths)}, port=args.port, address=args.address, show=args.show, title="relaylab explorer",
             websocket_origin=origins, extra_patterns=routes(), threaded=False, print=False, num_procs=args.num_procs,
             check_unused_sessions_milliseconds=SESSION_CHECK_MS, unused_session_lifetime_milliseconds=SESSION_CHECK_MS,
             prefix=args.prefix or "", **auth)
    return 0


SESSION_CHECK_MS = 5000  # a session whose browser left is freed within 5–10 s (Bokeh's defaults: 15–32 s)


def auth_options(args: argparse.Namespace) -> dict:
    """pn.serve's authentication options from the command line ({} when the server is open to anyone who reaches it)."""
    import secrets

    from ..errors import RelaylabError

    if args.basic_auth and args.oauth_provider:
        raise RelaylabError.at("relaylab serve", "--basic-auth, --oauth-provider", "one way to log in", "both")
    if not (args.basic_auth or args.oauth_provider):
        return {}
    if args.oauth_provider and not (args.oauth_key and args.oauth_secret):
        raise RelaylabError.at("relaylab serve", "--oauth-key, --oauth-secret", f"the client id and secret registered with "
                               f"{args.oauth_provider}", "missing")
    options = {"cookie_secret": args.cookie_secret or os.environ.get("BOKEH_COOKIE_SECRET") or secrets.token_urlsafe(32)}
    if args.basic_auth:
        options["basic_auth"] = args.basic_auth
    else:
        options.update(oauth_provider=args.oauth_provider, oauth_key=args.oauth_key, oauth_secret=args.oauth_secret,
                       oauth_redirect_uri=args.oauth_redirect_uri, oauth_encryption_key=args.oauth_encryption_key)
    return options


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
    serve.add_argument("--prefix", default="", help="URL prefix the app is served under, e.g. /relaylab behind a reverse proxy")
    shared = serve.add_argument_group("sharing one server", "Every session of a server process shares one copy of each project, "
                                      "its model and its caches.")
    shared.add_argument("--cache-memory", type=int, default=512, metavar="MB",
                        help="memory budget of the shared cache of points, clusterings and images (default: 512 MB)")
    shared.add_argument("--num-threads", type=int, default=0, metavar="N",
                        help="threads that handle sessions' events, so one session's slow step does not hold up the others "
                             "(default: 0, the event loop)")
    shared.add_argument("--num-procs", type=int, default=1, metavar="N",
                        help="server processes sharing the port (0: one per core); each opens the projects itself")
    login = serve.add_argument_group("logging in", "Without these, anyone who can reach the address can use the explorer. With "
                                     "them, the page and the image routes answer only logged-in users. Use TLS (a reverse proxy) "
                                     "for anything but this machine: see the deployment docs.")
    login.add_argument("--basic-auth", metavar="PASSWORD|FILE",
                       help="one password for everyone, or a JSON file of {\"user\": \"password\"} (Panel's basic auth)")
    login.add_argument("--cookie-secret", help="secret that signs the login cookie (default: $BOKEH_COOKIE_SECRET, else random "
                                               "per start, which logs everyone out on restart)")
    login.add_argument("--oauth-provider", help="an OAuth provider Panel knows: github, google, azure, gitlab, okta, auth0, generic, …")
    login.add_argument("--oauth-key", help="the OAuth client id")
    login.add_argument("--oauth-secret", help="the OAuth client secret")
    login.add_argument("--oauth-redirect-uri", help="the redirect URI registered with the provider")
    login.add_argument("--oauth-encryption-key", help="key to encrypt the OAuth tokens kept in the browser's cookie")
    serve.set_defaults(run=cmd_serve)
