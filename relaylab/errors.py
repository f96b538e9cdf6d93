"""Errors that tell the user which file, which path inside it, and what was expected; and `step`, which names the
step and file of an unexpected exception so the command line can report it in one line."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
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


# ------------------------------------------------------------------------------------------- unexpected exceptions

STEP = "relaylab_step"  # the attribute `step` sets on an exception: (what was being done, on which file)


@contextmanager
def step(what: str, file: str | os.PathLike) -> Iterator[None]:
    """Name what is being done, and on which file, for any unexpected exception raised inside.

    The innermost `step` names it (an exception passing through outer steps keeps the first name it got), so jobs
    wrap whole phases and the store wraps each block. The exception itself propagates unchanged; `relaylab.cli`
    turns it into one line ("<step> failed on <file>: <type>: <message>"). RelaylabErrors already say where they
    come from, and interrupts are not failures: both pass untouched. The name travels with the exception across
    threads and, pickled with its attributes, from Dask workers.
    """
    try:
        yield
    except RelaylabError:
        raise
    except Exception as error:
        name_step(error, what, file)
        raise


def name_step(error: BaseException, what: str, file: str | os.PathLike) -> BaseException:
    """Record (what, file) on `error` unless an inner step already did; returns `error`."""
    if getattr(error, STEP, None) is None:
        try:
            setattr(error, STEP, (what, str(file)))
        except (AttributeError, TypeError):  # an exception type without instance attributes: reported unnamed
            pass
    return error


def failed_step(error: BaseException) -> tuple[str, str] | None:
    """The (step, file) an unexpected exception was raised in, if a `step` named it."""
    named = getattr(error, STEP, None)
    return named if isinstance(named, tuple) and len(named) == 2 else None
