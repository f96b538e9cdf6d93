"""relaylab: dataset-wide explainable AI."""

__version__ = "0.1.0"

from .data.project import Project, open_project, open_projects  # noqa: E402

__all__ = ["Project", "open_project", "open_projects", "__version__"]
