"""The course manifest, ``course/course.toml``: assignments, tasks, points, regions, tests."""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:                                       # pragma: no cover - Python 3.10
    import tomli as tomllib

MANIFEST = Path("course") / "course.toml"
TASK_ID = re.compile(r"^\d+\.\d+$")


class ManifestError(ValueError):
    """course.toml is malformed: the message names the key and the task."""


@dataclass(frozen=True)
class Task:
    id: str
    name: str
    title: str
    points: float
    assignment: int
    lesson: str
    regions: tuple[str, ...]
    public: tuple[str, ...]
    hidden: tuple[str, ...]
    depends_on: tuple[str, ...]
    time_limit: float
    gpu: bool = False

    @property
    def tests(self) -> tuple[str, ...]:
        return self.public + self.hidden

    @property
    def where_taught(self) -> str:
        """'lessons/01_backprop_by_hand' (the lesson without its suffix), for stub messages."""
        return self.lesson[:-3] if self.lesson.endswith(".py") else self.lesson

    def stub_message(self, region_name: str) -> str:
        return f"task {self.id} {region_name}: see {self.where_taught}"


@dataclass(frozen=True)
class Assignment:
    number: int
    title: str
    tasks: tuple[Task, ...]
    optional: bool = False


@dataclass
class Course:
    root: Path
    title: str
    assignments: tuple[Assignment, ...]
    time_limit: float
    exclude: tuple[str, ...]
    handout_code: dict = field(default_factory=dict)     # region address -> handout code
    generic_lines: tuple[str, ...] = ()                  # region lines a person judged scaffolding
    notebook_points: float = 1.0
    notebook_time_limit: float = 300.0
    raw: dict = field(default_factory=dict)

    @property
    def tasks(self) -> list[Task]:
        return [t for a in self.assignments for t in a.tasks]

    def task(self, task_id: str) -> Task:
        for t in self.tasks:
            if t.id == task_id:
                return t
        raise ManifestError(f"no task {task_id!r} in course.toml (tasks: {', '.join(t.id for t in self.tasks)})")

    def select(self, assignments=None, tasks=None) -> list[Task]:
        """The tasks of the given assignment numbers and/or task ids (all when both are None)."""
        chosen = self.tasks
        if assignments:
            known = {a.number for a in self.assignments}
            unknown = sorted(set(int(n) for n in assignments) - known)
            if unknown:
                raise ManifestError(f"--assignment {unknown}: course.toml has assignments {sorted(known)}")
            chosen = [t for t in chosen if t.assignment in {int(n) for n in assignments}]
        if tasks:
            for task_id in tasks:
                self.task(task_id)
            chosen = [t for t in chosen if t.id in set(tasks)]
        return chosen

    def region_owner(self) -> dict[str, Task]:
        """Region address -> the task it belongs to."""
        return {address: t for t in self.tasks for address in t.regions}


def _strings(value, key: str, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ManifestError(f"{where}: {key} must be a list of strings, got {value!r}")
    return tuple(value)


def load(root: Path | str | None = None) -> Course:
    """Read ``course/course.toml`` under ``root`` (default: the current folder)."""
    root = Path(root) if root is not None else Path.cwd()
    path = root / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no course manifest here (run this in the project's root folder, "
                                "or in a handout made by `bertnp course release`)")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"{path}: {exc}") from None
    course = data.get("course", {})
    default_limit = float(course.get("time_limit", 60))
    assignments, seen = [], {}
    for a in data.get("assignment", []):
        number = a.get("number")
        if not isinstance(number, int):
            raise ManifestError(f"{path}: every [[assignment]] needs an integer number, got {number!r}")
        tasks = []
        for t in a.get("task", []):
            task_id = str(t.get("id", ""))
            where = f"{path}: task {task_id or '?'}"
            if not TASK_ID.match(task_id) or not task_id.startswith(f"{number}."):
                raise ManifestError(f"{where}: id must look like '{number}.N' inside assignment {number}")
            if task_id in seen:
                raise ManifestError(f"{where}: id used twice")
            for key in ("name", "points", "lesson", "regions"):
                if key not in t:
                    raise ManifestError(f"{where}: missing key {key!r}")
            points = t["points"]
            if isinstance(points, bool) or not isinstance(points, (int, float)) or points < 0:
                raise ManifestError(f"{where}: points must be a number >= 0, got {points!r}")
            task = Task(id=task_id, name=str(t["name"]), title=str(t.get("title", t["name"])),
                        points=float(points), assignment=number, lesson=str(t["lesson"]),
                        regions=_strings(t["regions"], "regions", where),
                        public=_strings(t.get("public"), "public", where),
                        hidden=_strings(t.get("hidden"), "hidden", where),
                        depends_on=_strings(t.get("depends_on"), "depends_on", where),
                        time_limit=float(t.get("time_limit", default_limit)), gpu=bool(t.get("gpu", False)))
            if not task.tests:
                raise ManifestError(f"{where}: a task needs at least one public or hidden test")
            seen[task_id] = task
            tasks.append(task)
        assignments.append(Assignment(number, str(a.get("title", "")), tuple(tasks), bool(a.get("optional", False))))
    for task in seen.values():
        unknown = [d for d in task.depends_on if d not in seen]
        if unknown:
            raise ManifestError(f"{path}: task {task.id}: depends_on names unknown task(s) {unknown}")
    owners: dict[str, str] = {}
    for task in seen.values():
        for address in task.regions:
            if ":" not in address:
                raise ManifestError(f"{path}: task {task.id}: region {address!r} must be 'path:name'")
            if address in owners:
                raise ManifestError(f"{path}: region {address} belongs to tasks {owners[address]} and {task.id}")
            owners[address] = task.id
    release = data.get("release", {})
    notebooks = data.get("notebooks", {})
    return Course(root=root, title=str(course.get("title", "")), assignments=tuple(assignments),
                  time_limit=default_limit, exclude=_strings(release.get("exclude"), "exclude", f"{path}: [release]"),
                  handout_code=dict(release.get("handout", {})),
                  generic_lines=tuple(" ".join(line.split()) for line in
                                      _strings(release.get("generic_lines"), "generic_lines", f"{path}: [release]")),
                  notebook_points=float(notebooks.get("points_per_exercise", 1)),
                  notebook_time_limit=float(notebooks.get("time_limit", 300)), raw=data)
