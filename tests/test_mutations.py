"""A mutation fuzzer: valid generated projects (synthetic.FormatPoint, an image folder) damaged one mutation at a time
(truncated or byte-flipped files, HDF5 datasets, groups and attributes dropped or retyped or reshaped, `index` shuffled
or broken, groups emptied, YAML keys and label-map entries dropped or retyped) and run through validate, open (every
value read) and convert, in process.

Every outcome must be the right data or a RelaylabError naming the file (and the path inside it): never another
exception, never a half-written output. And validate agrees with the rest: when it says ok the project opens and
converts; when opening or converting fails, it did not say ok. The right data: what was converted reads back from the
store as relaylab read it from the files, and as h5py reads it (tests/generated.py) when that reading applies.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from hypothesis import event, given, settings
from hypothesis import strategies as st

from relaylab.data.convert import convert_to_zarr
from relaylab.data.project import open_project
from relaylab.data.synthetic import FormatPoint, write_format_point, write_image_directory_project
from relaylab.data.validate import errors, validate
from relaylab.errors import RelaylabError

from .generated import assert_matches, read_reference

BASE = settings().max_examples

# Small, varied valid projects to damage: (point or None for an image folder, its layout)
BASES = {
    "chw-split": FormatPoint(n_samples=4, n_classes=2, attribution_files=2, analysis_files=(2,), overlapping=True, seed=1),
    "hwc-groups": FormatPoint(n_samples=4, n_classes=2, layout="hwc", dtype="float32", storage="group",
                              label_storage="group", attribution_storage="group", multi_label=True, predictions=False,
                              member_keys="shuffled", seed=2),
    "grey-odd": FormatPoint(n_samples=4, n_classes=3, layout="hw", dtype="float64", signed=True, storage="compressed",
                            label_storage="chunked", attribution_storage="chunked", attribution_coverage=0.6,
                            attribution_index=True, declare_size=False, declare_sampling=False, declare_regexes=False,
                            odd_names=True, category_names="odd", seed=3),
    "images": None,
}


class Base(tuple):
    """(YAML path, layout, what relaylab reads from it), shown by its path alone in hypothesis' reports."""

    def __repr__(self) -> str:
        return f"Base({str(self[0])!r})"


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Base]:
    """Each base project written once, checked and converted: (its YAML path, the layout of its HDF5 arrays, what
    relaylab reads from it)."""
    root = tmp_path_factory.mktemp("bases")
    made = {}
    for name, point in BASES.items():
        if point is None:
            path = write_image_directory_project(root / name, [(6, 5), (4, 4), (7, 6)], input_width=5, input_height=5,
                                                 up_sampling_method="edge_repeat", down_sampling_method="center_crop",
                                                 label_by="index", n_classes=2)
            made[name] = (path, "chw")
        else:
            made[name] = (write_format_point(root / name, point), point.layout)
        assert errors(validate(made[name][0], progress=False)) == [], name
        with open_project(made[name][0], dask=False) as project:
            read = snapshot(project)
        assert outcome(made[name][0], made[name][1], root / f"{name}-out", name) == "converted"
        made[name] = Base(made[name] + (read,))
    return made


# --------------------------------------------------------------------------------------------------- mutations


def truncate(file: Path, data) -> str:
    size = file.stat().st_size
    keep = data.draw(st.integers(0, max(0, size - 1)), label="keep bytes")
    with open(file, "r+b") as f:
        f.truncate(keep)
    return f"truncate to {keep} of {size} bytes"


def flip_bytes(file: Path, data) -> str:
    raw = bytearray(file.read_bytes())
    if not raw:
        return "nothing to flip"
    positions = data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=8), label="positions")
    mask = data.draw(st.integers(1, 255), label="xor mask")
    for p in positions:
        raw[p] ^= mask
    file.write_bytes(bytes(raw))
    return f"xor {mask} at {positions}"


def h5_objects(h5: h5py.File) -> list[str]:
    names: list[str] = []
    h5.visit(names.append)
    return sorted(names)


RETYPES = ["int16", "uint64", "float32", "float64", "bool", "S4", "int8"]


def retyped(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "S4":
        return np.asarray(values).astype(str).astype("S4")
    with np.errstate(all="ignore"):
        return np.asarray(values).astype(dtype)


def mutate_h5(file: Path, data) -> str:
    with h5py.File(file, "r+") as h5:
        names = h5_objects(h5)
        if not names:
            return "an empty file"
        name = data.draw(st.sampled_from(names), label="object")
        node = h5[name]
        kinds = ["delete", "attribute"]
        if isinstance(node, h5py.Dataset):
            kinds += ["retype", "reshape", "to group", "values"]
            if node.ndim == 1:
                kinds += ["shuffle", "index values"]
        else:
            kinds += ["empty group", "to dataset"]
        kind = data.draw(st.sampled_from(kinds), label="kind")
        if kind == "delete":
            del h5[name]
        elif kind == "attribute":
            attrs = sorted(node.attrs)
            choice = data.draw(st.sampled_from(attrs + ["<new layout>", "<new value_range>"]), label="attribute")
            if choice == "<new layout>":
                node.attrs["layout"] = data.draw(st.sampled_from(["hwc", "chw", "xyz", "7"]), label="layout")
            elif choice == "<new value_range>":
                node.attrs["value_range"] = data.draw(st.sampled_from([[0, 1], [5], ["a", "b"], 3]), label="range")
            elif data.draw(st.booleans(), label="drop attribute"):
                del node.attrs[choice]
            else:
                node.attrs[choice] = data.draw(st.sampled_from(["text", 7, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]]), label="value")
            kind = f"attribute {choice}"
        elif kind == "empty group":
            for key in list(node):
                del node[key]
        elif kind == "to dataset":
            del h5[name]
            h5[name] = np.arange(4)
        elif kind == "to group":
            del h5[name]
            group = h5.create_group(name)
            if data.draw(st.booleans(), label="with a member"):
                group["0"] = np.zeros(3)
        else:
            values = node[()]
            attrs = dict(node.attrs)
            if kind == "retype":
                dtype = data.draw(st.sampled_from(RETYPES), label="dtype")
                values, kind = retyped(values, dtype), f"retype to {dtype}"
            elif kind == "reshape":
                how = data.draw(st.sampled_from(["drop row", "add row", "drop axis", "add axis", "scalar", "empty"]), label="reshape")
                values = (values[:-1] if how == "drop row" else np.concatenate([values, values[:1]]) if how == "add row"
                          else values[..., 0] if how == "drop axis" and values.ndim > 1 else values[..., None] if how == "add axis"
                          else values.reshape(-1)[:1].reshape(()) if how == "scalar" and values.size else values[:0])
                kind = f"reshape: {how}"
            elif kind == "values":
                how = data.draw(st.sampled_from(["nan", "large", "negative"]), label="values")
                kind_of = np.asarray(values).dtype.kind
                dtype = np.float64 if how == "nan" or kind_of not in "iuf" else np.int64 if kind_of == "u" else values.dtype
                flat = np.asarray(values).astype(dtype).reshape(-1).copy() if values.size else values
                if values.size:
                    with np.errstate(all="ignore"):
                        flat[data.draw(st.integers(0, flat.size - 1), label="at")] = {"nan": np.nan, "large": 99, "negative": -2}[how]
                    values = flat.reshape(values.shape)
                kind = f"values: {how}"
            elif kind == "shuffle":
                values = np.asarray(values)[np.random.default_rng(data.draw(st.integers(0, 99), label="seed")).permutation(len(values))]
            elif kind == "index values":
                how = data.draw(st.sampled_from(["repeat", "out of range", "negative"]), label="index")
                values = np.asarray(values).astype(np.int64)
                if values.size:
                    values[-1] = values[0] if how == "repeat" else 999 if how == "out of range" else -1
                kind = f"index values: {how}"
            del h5[name]
            h5[name] = values
            for key, value in attrs.items():
                h5[name].attrs[key] = value
        return f"{kind} /{name}"


def key_paths(value, prefix=()) -> list[tuple]:
    paths = []
    if isinstance(value, dict):
        for key, item in value.items():
            paths.append(prefix + (key,))
            paths += key_paths(item, prefix + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            paths.append(prefix + (i,))
            paths += key_paths(item, prefix + (i,))
    return paths


RETYPED_VALUES = [7, -1, 2.5, "x", "", None, [], {}, ["missing.h5"], True]


def mutate_tree(tree, data) -> str:
    paths = key_paths(tree)
    if not paths:
        return "no keys"
    path = data.draw(st.sampled_from(paths), label="key")
    parent = tree
    for key in path[:-1]:
        parent = parent[key]
    how = data.draw(st.sampled_from(["drop", "retype", "missing file", "duplicate"]), label="how")
    if how == "drop":
        del parent[path[-1]]
    elif how == "retype":
        parent[path[-1]] = data.draw(st.sampled_from(RETYPED_VALUES), label="value")
    elif how == "missing file":
        parent[path[-1]] = "no such file.h5"
    elif isinstance(parent, list):
        parent.append(parent[path[-1]])
    else:
        parent[path[-1]] = [parent[path[-1]], parent[path[-1]]]
    return f"{how} {'.'.join(map(str, path))}"


def mutate_yaml(file: Path, data) -> str:
    tree = yaml.safe_load(file.read_text(encoding="utf-8"))
    what = mutate_tree(tree, data)
    file.write_text(yaml.safe_dump(tree, allow_unicode=True), encoding="utf-8")
    return what


def mutate_json(file: Path, data) -> str:
    entries = json.loads(file.read_text(encoding="utf-8"))
    if data.draw(st.booleans(), label="shuffle entries"):
        order = np.random.default_rng(data.draw(st.integers(0, 99), label="seed")).permutation(len(entries))
        entries, what = [entries[i] for i in order], "shuffle entries"
    else:
        what = mutate_tree(entries, data)
    file.write_text(json.dumps(entries, ensure_ascii=False), encoding="utf-8")
    return what


def mutate(folder: Path, data) -> str:
    """One mutation of one file of the project in `folder` (or the removal of a file); says what it did."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    file = data.draw(st.sampled_from(files), label="file")
    kinds = ["truncate", "flip", "remove"]
    kinds += {".h5": ["h5"] * 4, ".yaml": ["yaml"] * 3, ".json": ["json"] * 3}.get(file.suffix, [])
    kind = data.draw(st.sampled_from(kinds), label="mutation")
    where = file.relative_to(folder)
    if kind == "truncate":
        return f"{where}: {truncate(file, data)}"
    if kind == "flip":
        return f"{where}: {flip_bytes(file, data)}"
    if kind == "remove":
        file.unlink()
        return f"{where}: removed"
    return f"{where}: " + {"h5": mutate_h5, "yaml": mutate_yaml, "json": mutate_json}[kind](file, data)


# ------------------------------------------------------------------------------------------------- the outcomes

# Bugs the fuzzer found and that are not fixed yet: the function whose raw exception marks each. The fuzzer counts
# them as "known bug: ..." instead of failing; give each an xfail(strict) test that reproduces it. None today.
KNOWN_BUGS: dict[str, str] = {}


def known_bug(error: BaseException) -> str | None:
    if isinstance(error, (RelaylabError, AssertionError)):
        return None
    names = set()
    tb = error.__traceback__
    while tb is not None:
        names.add(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    return next((f"known bug: {name}" for name in KNOWN_BUGS if name in names), None)


def assert_names_the_file(error: RelaylabError, folder: Path, what: str) -> None:
    """Each problem names a file of the project (or the project folder's output) and says what was expected."""
    for problem in error.problems:
        assert problem.file and problem.expected, f"{what}: a problem without a file or expectation: {problem!r}"
        assert str(folder.resolve()) in str(Path(problem.file).resolve()) or str(folder) in problem.file, \
            f"{what}: {problem!r} names no file of the project"


def snapshot(project) -> dict:
    """Every value of an opened project, read (errors in the data surface only then), by name; and what else a
    conversion copies: names, the label map, attributes."""
    values = {"input": project.inputs["input"].values, "label": project.inputs["label"].values,
              "names": np.array([project.name, project.model, project.dataset_name], dtype=object),
              "label map": np.array([repr(project.label_map[v].values.tolist()) for v in ("class", "word_net_id", "name")], dtype=object),
              "input attrs": np.array(repr(sorted((k, v) for k, v in project.inputs.attrs.items() if k != "source_file")), dtype=object)}
    for name, ds in project.attributions.items():
        ds = ds.sortby("sample")
        values.update({f"{name}/{var}": ds[var].values for var in ("sample", "attribution", "label", "prediction") if var in ds})
    for method, tree in project.analyses.items():
        for node in tree.subtree:
            for var, array in node.dataset.variables.items():
                values[f"{method}{node.path}/{var}"] = array.values
                values[f"{method}{node.path}/{var} attrs"] = np.array(repr(sorted(array.attrs.items(), key=str)), dtype=object)
            values[f"{method}{node.path} attrs"] = np.array(repr(sorted((k, v) for k, v in node.attrs.items() if k != "source_file")), dtype=object)
    return values


def same_values(a: dict, b: dict) -> bool:
    if sorted(a) != sorted(b):
        return False
    for key, values in a.items():
        other = b[key]
        if values.dtype != other.dtype or values.shape != other.shape:
            return False
        if not np.array_equal(values, other, equal_nan=values.dtype.kind in "fc"):
            return False
    return True


def assert_same_values(got: dict, expected: dict, what: str) -> None:
    """The values (not the attributes, which a store keeps its own way) of two snapshots are equal."""
    got, expected = ({k: v for k, v in d.items() if not k.endswith("attrs")} for d in (got, expected))
    assert sorted(got) == sorted(expected), f"{what}: {sorted(set(got) ^ set(expected))}"
    for key, values in expected.items():
        np.testing.assert_array_equal(got[key], values, err_msg=f"{what}: {key}")


def outcome(yaml_path: Path, layout: str, work: Path, what: str, unchanged: dict | None = None) -> str:
    try:
        return checked_outcome(yaml_path, layout, work, what, unchanged)
    except Exception as error:
        known = known_bug(error)
        if known is None:
            raise
        return known


def checked_outcome(yaml_path: Path, layout: str, work: Path, what: str, unchanged: dict | None = None) -> str:
    """Run validate, open and convert on a (damaged) project; assert the rules; say what happened. A project that
    validates and reads exactly as `unchanged` (the undamaged base: the mutation hit nothing relaylab reads) is not
    converted again: its conversion is the base's, checked when the base was written."""
    folder = yaml_path.parent
    try:
        problems = validate(yaml_path, progress=False)
    except RelaylabError as error:
        assert_names_the_file(error, folder, what)
        problems = error.problems
    for problem in problems:
        assert problem.file, f"{what}: validate reported a problem without a file: {problem!r}"
    said_ok = not errors(problems)

    try:
        with open_project(yaml_path, dask=False) as project:
            read = snapshot(project)
    except RelaylabError as error:
        assert_names_the_file(error, folder, what)
        assert not said_ok, f"{what}: validate said ok, then opening failed: {error}"
        return "refused at opening"
    if said_ok and unchanged is not None and same_values(read, unchanged):
        return "unchanged"

    store = work / "out.zarr"
    try:
        convert_to_zarr(yaml_path, store, progress=False)
    except RelaylabError as error:
        assert_names_the_file(error, folder, what)
        assert not said_ok, f"{what}: validate said ok, then convert failed: {error}"
        if store.exists():
            assert errors(validate(store, progress=False)), f"{what}: a failed convert left a store that validates"
        return "refused at converting"

    with open_project(store, dask=False) as stored:
        assert_same_values(snapshot(stored), read, what)
        try:
            ref = read_reference(yaml_path, layout)
        except (KeyError, ValueError, TypeError, OSError, AssertionError, IndexError, AttributeError):
            return "converted (no h5py reading to hold it against)"
        assert_matches(stored, ref, exact_dtypes=False)
    return "converted"


@pytest.mark.slow  # over a minute: ./dev test --fast leaves it out; the examples below stay in
@settings(max_examples=10 * BASE)
@given(base=st.sampled_from(sorted(BASES)), data=st.data())
def test_every_mutation_gives_the_right_data_or_a_relaylab_error_naming_the_file(base, data, bases, tmp_path_factory):
    yaml_path, layout, unchanged = bases[base]
    with tempfile.TemporaryDirectory(dir=tmp_path_factory.getbasetemp()) as folder:
        work = Path(folder)
        copy = work / "project"
        shutil.copytree(yaml_path.parent, copy)
        what = f"{base}: {mutate(copy, data)}"
        result = outcome(copy / yaml_path.name, layout, work, what, unchanged)
        event(result)  # the share of each outcome: pytest --hypothesis-show-statistics


def test_the_mutations_reach_every_outcome(bases, tmp_path):
    """The fuzzer is not vacuous: a truncated dataset file is refused at opening, NaN in an attribution at
    converting, and a shuffled attribution index converts (the rows belong to other samples now)."""
    yaml_path, layout, _ = bases["chw-split"]
    results = {}
    for name, change in [("truncated", lambda d: truncate_to(next(d.rglob("*data set.h5")), 100)),
                         ("nan", lambda d: set_h5(next(d.rglob("*attribution-0.h5")), "attribution", np.nan)),
                         ("shuffled", lambda d: shuffle_h5(next(d.rglob("*attribution-1.h5")), "index"))]:
        copy = tmp_path / name / "project"
        shutil.copytree(yaml_path.parent, copy)
        change(copy)
        results[name] = outcome(copy / yaml_path.name, layout, tmp_path / name, name)
    assert results == {"truncated": "refused at opening", "nan": "refused at converting", "shuffled": "converted"}
    assert not (tmp_path / "nan" / "out.zarr").exists()


def truncate_to(file: Path, size: int) -> None:
    with open(file, "r+b") as f:
        f.truncate(size)


def set_h5(file: Path, name: str, value) -> None:
    with h5py.File(file, "r+") as h5:
        h5[name][(0,) * h5[name].ndim] = value


def shuffle_h5(file: Path, name: str) -> None:
    with h5py.File(file, "r+") as h5:
        h5[name][...] = h5[name][()][::-1]



def test_a_damaged_per_sample_group_is_reported_by_validate(bases, tmp_path):
    yaml_path, _, _ = bases["hwc-groups"]
    copy = tmp_path / "project"
    shutil.copytree(yaml_path.parent, copy)
    file = copy / "files" / "attribution-0.h5"
    raw = bytearray(file.read_bytes())
    for position in (232, 2973, 4243, 889, 7415, 146, 1243, 3002):  # the fuzzer's example: the group's local heap
        raw[position] ^= 251
    file.write_bytes(bytes(raw))
    problems = validate(copy / yaml_path.name, progress=False)
    assert any(p.file == str(file) for p in errors(problems))


# ---------------------------------------------------------------- the fuzzer's findings, fixed: one example of each


def corrupt_signature(signature: bytes):
    """Overwrite the first HDF5 structure with this signature (b"TREE": a group's B-tree, b"HEAP": its name heap)."""
    def change(file: Path) -> None:
        raw = bytearray(file.read_bytes())
        at = raw.index(signature)
        raw[at:at + 4] = b"XXXX"
        file.write_bytes(bytes(raw))
    return change


def corrupt_first_chunk(name: str):
    """Overwrite the stored bytes of the first chunk of a compressed dataset: decompression fails when it is read."""
    def change(file: Path) -> None:
        with h5py.File(file, "r") as h5:
            info = h5[name].id.get_chunk_info(0)
        with open(file, "r+b") as f:
            f.seek(info.byte_offset)
            f.write(b"\xff" * min(info.size, 16))
    return change


def h5_edit(name: str, values=None, group: bool = False):
    def change(file: Path) -> None:
        with h5py.File(file, "r+") as h5:
            del h5[name]
            if group:
                h5.create_group(name)["0"] = np.zeros(3)
            else:
                h5[name] = values
    return change


FIXED = [  # (base, file glob, change, where the error must point: path inside the file)
    ("chw-split", "*data set.h5", h5_edit("label", np.int64(1)), "/label"),
    ("chw-split", "*attribution-0.h5", h5_edit("label", np.zeros((2, 1), bool)), "/label"),
    ("chw-split", "*attribution-0.h5", h5_edit("prediction", np.float32(1)), "/prediction"),
    ("chw-split", "*attribution-0.h5", h5_edit("prediction", np.array([[b"0.5", b"1"]] * 2)), "/prediction"),
    ("chw-split", "*analysis-0-0.h5", h5_edit("n00000001/cluster", np.arange(3)), "/n00000001/cluster"),
    ("chw-split", "*analysis-0-0.h5", h5_edit("n00000001/index", group=True), "/n00000001/index"),
    ("chw-split", "*data set.h5", corrupt_signature(b"HEAP"), "/"),
    ("chw-split", "*analysis-0-0.h5", corrupt_signature(b"TREE"), "/"),
    ("grey-odd", "*data set.h5", corrupt_first_chunk("data"), "/data"),
    ("chw-split", "*data set.h5", lambda file: h5_attr(file, "data", "value_range", ["a", "b"]), "/data@value_range"),
    ("hwc-groups", "*attribution-0.h5", lambda file: flip_byte(file, 1440, 128), "/attribution"),
]


def flip_byte(file: Path, position: int, mask: int) -> None:
    """The fuzzer's example: one bit of a per-sample group's link name, which h5py then lists as bytes, not text."""
    raw = bytearray(file.read_bytes())
    raw[position] ^= mask
    file.write_bytes(bytes(raw))


def h5_attr(file: Path, name: str, key: str, value) -> None:
    with h5py.File(file, "r+") as h5:
        h5[name].attrs[key] = value



@pytest.mark.parametrize("base, pattern, change, path", FIXED, ids=[
    "scalar label", "one-column n-hot labels beside 2-class predictions", "scalar prediction", "string predictions",
    "cluster group as an array", "index as a group", "damaged name heap", "damaged group B-tree", "damaged chunk",
    "value_range of strings", "a member name that is not UTF-8"])
def test_what_the_fuzzer_found_is_reported_with_file_and_path(bases, tmp_path, base, pattern, change, path):
    """Each was a raw IndexError, ValueError, AttributeError or h5py error (or a validate that said ok, for the
    damaged chunk); now validate reports it, opening or converting raises a RelaylabError naming the file and the
    path inside it, and no store is left behind."""
    yaml_path, layout, _ = bases[base]
    copy = tmp_path / "project"
    shutil.copytree(yaml_path.parent, copy)
    file = next(copy.rglob(pattern))
    change(file)
    problems = errors(validate(copy / yaml_path.name, progress=False))
    assert any(p.file == str(file) and p.path == path for p in problems), problems
    with pytest.raises(RelaylabError) as caught:
        with open_project(copy / yaml_path.name, dask=False) as project:
            snapshot(project)
        convert_to_zarr(copy / yaml_path.name, tmp_path / "out.zarr", progress=False)
    assert any(p.file == str(file) and p.path.lstrip("/") == path.lstrip("/") for p in caught.value.problems), caught.value
    assert not (tmp_path / "out.zarr").exists()
