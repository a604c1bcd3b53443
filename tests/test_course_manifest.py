"""course/course.toml against the sources: every region it names is marked exactly once, every
marker in the sources is named, every test it names exists. A marker lost in a merge fails here."""
from __future__ import annotations

import ast
import importlib.util
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bertnp.course import manifest
from bertnp.course.markers import MarkerError, library_regions, lesson_regions, regions_of

ROOT = Path(__file__).resolve().parents[1]
COURSE = manifest.load(ROOT)


def _tracked() -> list[str]:
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True, check=True).stdout
    return [p for p in out.splitlines() if (ROOT / p).is_file()]


def test_every_region_named_in_the_manifest_is_marked_exactly_once():
    for task in COURSE.tasks:
        for address in task.regions:
            path, _, name = address.rpartition(":")
            text = (ROOT / path).read_text(encoding="utf-8")
            found = [r for r in regions_of(path, text) if r.name == name]
            assert len(found) == 1, f"task {task.id}: region {address} is marked {len(found)} times"
            if found[0].task is not None:
                assert found[0].task == task.id, f"{address} is marked as task {found[0].task}, the manifest says {task.id}"
            assert found[0].end - found[0].start > 1, f"{address} is empty"


def test_every_marker_in_the_sources_is_named_in_the_manifest():
    named = {a for t in COURSE.tasks for a in t.regions}
    handout_only = set(COURSE.handout_code)
    assert handout_only <= named
    for path in _tracked():
        if path.startswith("lessons/") or not path.endswith((".py", ".cu", ".cuh")) or path.startswith("course/"):
            continue
        text = (ROOT / path).read_text(encoding="utf-8")
        for region in regions_of(path, text):
            assert region.address in named, f"{region.address} (task {region.task}) is marked but not in course.toml"


def test_lessons_have_well_formed_solution_regions():
    lessons = sorted((ROOT / "lessons").glob("[0-9][0-9]_*.py"))
    assert lessons
    total = 0
    for lesson in lessons:
        total += len(lesson_regions(f"lessons/{lesson.name}", lesson.read_text(encoding="utf-8")))
    assert total >= 10


def test_markers_pair_up_and_do_not_nest():
    with pytest.raises(MarkerError, match="never closed"):
        library_regions("x.py", "    # TASK 1.1 a: text\n    x = 1\n")
    with pytest.raises(MarkerError, match="closes TASK"):
        library_regions("x.py", "# TASK 1.1 a\nx = 1\n# END TASK 1.2\n")
    with pytest.raises(MarkerError, match="do not nest"):
        library_regions("x.py", "# TASK 1.1 a\n# TASK 1.1 b\n# END TASK 1.1\n# END TASK 1.1\n")
    with pytest.raises(MarkerError, match="more than once"):
        library_regions("x.py", "# TASK 1.1 a\nx\n# END TASK 1.1\n# TASK 1.1 a\ny\n# END TASK 1.1\n")
    (region,) = library_regions("k.cu", "  // TASK 6.1 kernel: text\n  x = 1;\n  // END TASK 6.1\n")
    assert (region.task, region.name, region.indent, region.comment) == ("6.1", "kernel", "  ", "//")


def test_every_test_the_manifest_names_exists_and_lessons_exist():
    tests_root = ROOT / "course" / "tests"
    for task in COURSE.tasks:
        assert (ROOT / task.lesson).is_file(), f"task {task.id}: lesson {task.lesson} does not exist"
        for node in task.tests:
            file, _, function = node.partition("::")
            tree = ast.parse((tests_root / file).read_text(encoding="utf-8"))
            names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
            assert function in names, f"task {task.id}: {node} does not exist"
            assert file.startswith(("public/", "hidden/")), node


def test_the_public_fixtures_match_the_library(tmp_path):
    spec = importlib.util.spec_from_file_location("make_fixtures", ROOT / "course" / "tests" / "hidden" / "make_public_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = ROOT / "course" / "tests" / "public" / "data"
    for name, fresh in (("attention_forward", module.attention_fixture()), ("adamw_steps", module.adamw_fixture())):
        committed = np.load(data / f"{name}.npz")
        assert sorted(committed.files) == sorted(fresh)
        for key in fresh:
            np.testing.assert_allclose(committed[key], fresh[key], rtol=1e-12, atol=1e-14, err_msg=f"{name}: {key}")


def test_manifest_errors_name_the_task(tmp_path):
    (tmp_path / "course").mkdir()
    (tmp_path / "course" / "course.toml").write_text(
        '[[assignment]]\nnumber = 1\n[[assignment.task]]\nid = "2.1"\nname = "x"\npoints = 1\nlesson = "l"\nregions = []\npublic = ["p"]\n')
    with pytest.raises(manifest.ManifestError, match=r"task 2\.1: id must look like '1\.N'"):
        manifest.load(tmp_path)
    (tmp_path / "course" / "course.toml").write_text(
        '[[assignment]]\nnumber = 1\n[[assignment.task]]\nid = "1.1"\nname = "x"\npoints = 1\nlesson = "l"\nregions = []\npublic = ["p"]\ndepends_on = ["1.9"]\n')
    with pytest.raises(manifest.ManifestError, match="unknown task"):
        manifest.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no course manifest"):
        manifest.load(tmp_path / "nowhere")


def test_nbgrader_blanks_only_the_solution_region_of_code_cells():
    from bertnp.course.notebooks import blank_cell, blank_lesson_source
    cell = "def f(x):\n    y = 1\n    ### BEGIN SOLUTION\n    y = x * 2\n    ### END SOLUTION\n    return y\n"
    blanked = blank_cell(cell, "05")
    assert "x * 2" not in blanked and "y = 1" in blanked and "return y" in blanked
    assert "    raise NotImplementedError(\"lesson 05 exercise" in blanked
    source = ("# %% [markdown]\n# Write between `### BEGIN SOLUTION` and `### END SOLUTION`.\n# Keep this line.\n\n"
              "# %% tags=[\"exercise\"]\n" + cell)
    out = blank_lesson_source(source, "05")
    assert "Keep this line." in out and "x * 2" not in out      # Markdown quoting the delimiters is untouched


def test_the_course_ring_names_bad_input():
    """bertnp/course/ring.py (task 8.1's module): what a caller gets wrong is named."""
    from bertnp.course.ring import Ring, ring_allreduce
    with pytest.raises(ValueError, match="positive number of ranks"):
        Ring(0)
    with pytest.raises(ValueError, match="3 buffers for a ring of 2 ranks"):
        ring_allreduce([np.zeros(4)] * 3, Ring(2))
    with pytest.raises(ValueError, match="1-D and of one length"):
        ring_allreduce([np.zeros(4), np.zeros(5)], Ring(2))
    with pytest.raises(ValueError, match="one array per rank"):
        Ring(3).exchange([np.zeros(1)])
    buffers = [np.arange(5.0) * (r + 1) for r in range(4)]
    ring = Ring(4)
    ring_allreduce(buffers, ring)
    assert all(np.array_equal(b, np.arange(5.0) * 10) for b in buffers) and ring.steps == 6
