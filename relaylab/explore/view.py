"""`ProjectViewer`: the base of the explorer's views, each made from the project's data and the session's view state."""

from __future__ import annotations

import panel as pn
import param

from ..data.project import Project
from .data import ProjectData
from .state import ViewState


class ProjectViewer(pn.viewable.Viewer):
    """A view of one project: `data` is the process's `ProjectData` (shared with every session), `state` the session's
    `ViewState`. The view reads the state's fields and writes them where the user changes something; it keeps no copy
    of them, so every view of a session always shows the same choice. Watch state fields with
    `@param.depends("state.<field>", watch=True)`."""

    data = param.ClassSelector(class_=ProjectData, constant=True, doc="the project and what is read from it, shared by sessions")
    state = param.ClassSelector(class_=ViewState, constant=True, doc="what this session shows")

    def __init__(self, data: ProjectData, state: ViewState, **params):
        super().__init__(data=data, state=state, **params)

    @property
    def project(self) -> Project:
        return self.data.project
