"""The relaylab explorer as a Panel app: `panel serve apps/explorer.py --args PROJECT...`.

Projects come from `--args`, else from $RELAYLAB_PROJECTS (os.pathsep-separated, for deployments with several
server processes), else from $VIRELAY_PROJECTS (`:`-separated, as ViRelAy reads it), else the built-in demo project
(built on first use). `relaylab serve PROJECT...` runs the same app.
"""

import sys

from relaylab.explore.app import build_app
from relaylab.explore.commands import environment_projects
from relaylab.explore.data import serve_paths
from relaylab.explore.embedding import warm_up


def project_paths() -> tuple[list[str], str | None]:
    """The projects to serve, and a message for the page when there are none."""
    if sys.argv[1:]:
        return sys.argv[1:], None
    listed = environment_projects()
    if listed:
        return listed, None
    try:
        from relaylab.demo import ensure_demo
    except ImportError:
        return [], ("no projects given and this relaylab has no demo: pass projects with "
                    "`panel serve apps/explorer.py --args PROJECT...` or set RELAYLAB_PROJECTS or VIRELAY_PROJECTS")
    return [str(ensure_demo())], None


warm_up()  # once per process; with `panel serve --warm` before the first browser connects
paths, message = project_paths()
serve_paths(paths)  # this process answers image URLs of these projects, also when another process served the page
build_app(paths, message=message).servable(title="relaylab explorer")
