"""Bad input to the explorer's and the demo's commands: a clear message naming the file, exit 2, nothing written.
In-process (conftest's `cli`); tests/test_bad_input.py runs the real command line in a child process."""


def test_serve_checks_every_project_before_starting_a_server(make_project, tmp_path, cli):
    good = make_project(name="good")
    missing = tmp_path / "nowhere" / "project.yaml"
    result = cli("serve", good, missing, "--no-show", "--port", "1")
    assert result.returncode == 2
    assert str(missing) in result.stderr
    assert "explorer:" not in result.stdout  # the server's address is printed only once every project opened


def test_serve_refuses_two_projects_with_the_same_name(make_project, cli):
    first, second = make_project(name="twin"), make_project(name="twin")
    result = cli("serve", first, second, "--no-show", "--port", "1")
    assert result.returncode == 2 and "twin" in result.stderr


def test_demo_refuses_a_non_empty_folder_and_leaves_it_as_it_was(tmp_path, cli):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    result = cli("demo", folder, "-q")
    assert result.returncode == 2 and str(folder) in result.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # no half-built sibling left behind
