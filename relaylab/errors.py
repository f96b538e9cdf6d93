"""Errors that tell the user which file, which path inside it, and what was expected."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a project: where it is and what was expected there. A "warning" is input that is
    accepted on an assumption, which `found` states; an "error" stops the input from being used."""

    file: str
    path: str
    expected: str
    found: str = ""
    level: str = "error"  # "error" | "warning"

    def __str__(self) -> str:
        where = f"{self.file}:{self.path}" if self.path else self.file
        found = f" (found {self.found})" if self.found else ""
        return f"{where}: expected {self.expected}{found}"


class RelaylabError(Exception):
    """Bad input or a failed step, reported as one or more `Problem`s."""

    def __init__(self, problems: Problem | list[Problem]):
        self.problems = [problems] if isinstance(problems, Problem) else list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def __reduce__(self):
        """Pickle by problems, so an error raised on a Dask worker arrives whole."""
        return type(self), (self.problems,)

    @classmethod
    def at(cls, file: str | Path, path: str, expected: str, found: str = "") -> "RelaylabError":
        return cls(Problem(str(file), path, expected, found))


class IncompleteStoreError(RelaylabError):
    """A Zarr store (or one of its groups) that a killed job left half-written."""
