"""The study file: one SQLite database holding the images, the design, the raters and every answer.

Everything a rater is shown (both garments, the sketch, the prompt) is copied in as PNG blobs, so the file is the
whole study: it can be moved or mailed, and serving it never opens a path. Answers are written in WAL mode with
synchronous=FULL, one commit per answer, so a crash or a restart of the server loses none that were
acknowledged; UNIQUE (rater, comparison, criterion) makes a repeated submission (double click, retry after a
restart) a no-op instead of a second row.
"""

from __future__ import annotations

import json
import sqlite3
import urllib.parse
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from fashionsd_x.apps.study.design import Design

FORMAT = "fsdx-study/1"  # meta "format" of files this module reads and writes
CHOICES = ("left", "right", "tie")  # what a rater may answer; tie is "can't tell"
BUSY_TIMEOUT_MS = 30_000  # writers wait this long for each other (one commit takes milliseconds)
MIN_INTEGER, MAX_INTEGER = -2**63, 2**63 - 1  # SQLite's INTEGER; binding a Python int beyond it overflows

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);  -- JSON values: design, source, versions
CREATE TABLE criteria (name TEXT PRIMARY KEY, position INTEGER NOT NULL UNIQUE, question TEXT NOT NULL);
CREATE TABLE images (id INTEGER PRIMARY KEY, png BLOB NOT NULL);
CREATE TABLE items (
    id INTEGER PRIMARY KEY, garment TEXT NOT NULL UNIQUE, prompt TEXT NOT NULL, sketch INTEGER REFERENCES images(id));
CREATE TABLE outputs (
    item INTEGER NOT NULL REFERENCES items(id), variant TEXT NOT NULL, image INTEGER NOT NULL REFERENCES images(id),
    PRIMARY KEY (item, variant));
CREATE TABLE comparisons (
    id INTEGER PRIMARY KEY, item INTEGER NOT NULL, variant_a TEXT NOT NULL, variant_b TEXT NOT NULL,
    UNIQUE (item, variant_a, variant_b),
    FOREIGN KEY (item, variant_a) REFERENCES outputs(item, variant),
    FOREIGN KEY (item, variant_b) REFERENCES outputs(item, variant));
CREATE TABLE raters (id INTEGER PRIMARY KEY, number INTEGER NOT NULL UNIQUE,
    code TEXT NOT NULL UNIQUE COLLATE NOCASE,  -- "Ann" coming back as "ann" is the same rater, not a new queue
    created TEXT NOT NULL);
CREATE TABLE assignments (
    rater INTEGER NOT NULL REFERENCES raters(id), position INTEGER NOT NULL,
    comparison INTEGER NOT NULL REFERENCES comparisons(id), a_left INTEGER NOT NULL CHECK (a_left IN (0, 1)),
    PRIMARY KEY (rater, position), UNIQUE (rater, comparison));
CREATE TABLE answers (
    id INTEGER PRIMARY KEY, rater INTEGER NOT NULL, comparison INTEGER NOT NULL,
    criterion TEXT NOT NULL REFERENCES criteria(name), choice TEXT NOT NULL CHECK (choice IN ('left', 'right', 'tie')),
    answered TEXT NOT NULL,
    UNIQUE (rater, comparison, criterion),
    FOREIGN KEY (rater, comparison) REFERENCES assignments(rater, comparison));
"""


class StudyError(ValueError):
    """A file that is not a usable study, or a study that cannot do what was asked; one line."""


class UnknownComparison(LookupError):
    """An answer for a comparison that is not in the rater's queue."""


class AnswerConflict(ValueError):
    """A second, different answer to a question already answered (the first one stands)."""


@dataclass(frozen=True)
class Task:
    """The next comparison a rater has to answer, as the page shows it (no variant names: the study is blind)."""

    comparison: int  # comparison id
    position: int  # 1-based place in the rater's queue
    prompt: str
    sketch: int | None  # image ids
    left: int
    right: int
    answered: dict[str, str]  # criterion -> choice already given for this comparison


@dataclass(frozen=True)
class Progress:
    """Where a rater stands: comparisons fully answered out of their queue, and the next one if any."""

    code: str
    done: int
    total: int
    task: Task | None


def connect(path: Path, must_exist: bool = True) -> sqlite3.Connection:
    """A connection with the settings every writer needs (WAL itself is set once, by `enable_wal`)."""
    mode = "rw" if must_exist else "rwc"  # rw: a wrong path fails instead of creating an empty file
    uri = f"file:{urllib.parse.quote(str(Path(path).resolve()))}?mode={mode}"
    # isolation_level=None: every statement outside `immediate` commits by itself (one commit per answer).
    connection = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                 check_same_thread=False)
    connection.row_factory = sqlite3.Row
    connection.execute("PRAGMA foreign_keys = ON")
    connection.execute("PRAGMA synchronous = FULL")  # an acknowledged answer survives a crash of the machine too
    return connection


def create_file(path: Path) -> sqlite3.Connection:
    """A new, empty study file with the schema."""
    connection = connect(path, must_exist=False)
    connection.executescript(SCHEMA)
    return connection


def enable_wal(path: Path) -> None:
    """Switch a finished study file to WAL (persistent in the file): readers never block the writer."""
    connection = sqlite3.connect(path)
    try:
        connection.execute("PRAGMA journal_mode = WAL")
    finally:
        connection.close()


def open_study(path: Path) -> sqlite3.Connection:
    """A connection to an existing study file; never creates one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; make it with `fsdx study create --from EVAL_DIR --out {path}`")
    connection = None
    try:
        connection = connect(path)
        found = connection.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
        if found is None or json.loads(found[0]) != FORMAT:
            raise StudyError(f"format {found and found[0]}, expected {FORMAT!r}")
    except (sqlite3.DatabaseError, StudyError) as error:
        if connection is not None:
            connection.close()
        raise StudyError(f"{path} is not a study made by `fsdx study create` ({error})") from None
    return connection


def read_meta(connection: sqlite3.Connection) -> dict[str, Any]:
    """The study's meta table, values decoded."""
    return {row["key"]: json.loads(row["value"]) for row in connection.execute("SELECT key, value FROM meta")}


def write_meta(connection: sqlite3.Connection, meta: dict[str, Any]) -> None:
    connection.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                           [(key, json.dumps(value)) for key, value in meta.items()])


def criteria(connection: sqlite3.Connection) -> dict[str, str]:
    """criterion name -> question, in the order they are asked."""
    rows = connection.execute("SELECT name, question FROM criteria ORDER BY position")
    return {row["name"]: row["question"] for row in rows}


def design(connection: sqlite3.Connection) -> Design:
    """The study's rotation design, from its meta table."""
    meta = read_meta(connection)
    return Design(meta["num_comparisons"], meta["per_rater"], meta["seed"])


def rater_id(connection: sqlite3.Connection, code: str, create: bool = True) -> int | None:
    """The rater with this code; a new one gets the next number and its queue in the same transaction."""
    found = connection.execute("SELECT id FROM raters WHERE code = ?", (code,)).fetchone()
    if found is not None or not create:
        return None if found is None else found["id"]
    study_design = design(connection)
    with immediate(connection):  # BEGIN IMMEDIATE: numbers are handed out one writer at a time
        found = connection.execute("SELECT id FROM raters WHERE code = ?", (code,)).fetchone()
        if found is not None:
            return found["id"]
        number = connection.execute("SELECT COUNT(*) FROM raters").fetchone()[0]
        cursor = connection.execute("INSERT INTO raters (number, code, created) VALUES (?, ?, ?)",
                                    (number, code, _now()))
        connection.executemany(
            "INSERT INTO assignments (rater, position, comparison, a_left) VALUES (?, ?, ?, ?)",
            [(cursor.lastrowid, position, slot.comparison + 1, int(slot.first_left))
             for position, slot in enumerate(study_design.queue(number))])
        return cursor.lastrowid


@contextmanager
def immediate(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on an exception): one writer at a time for a multi-statement change."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield connection
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def progress(connection: sqlite3.Connection, rater: int) -> Progress:
    """How far the rater is, and the first comparison of their queue with a question left."""
    num_criteria = connection.execute("SELECT COUNT(*) FROM criteria").fetchone()[0]
    rows = connection.execute(
        "SELECT s.position, s.comparison, s.a_left, COUNT(a.id) AS answered FROM assignments s "
        "LEFT JOIN answers a ON a.rater = s.rater AND a.comparison = s.comparison "
        "WHERE s.rater = ? GROUP BY s.position ORDER BY s.position", (rater,)).fetchall()
    code = connection.execute("SELECT code FROM raters WHERE id = ?", (rater,)).fetchone()["code"]
    done = sum(row["answered"] >= num_criteria for row in rows)
    pending = next((row for row in rows if row["answered"] < num_criteria), None)
    task = None if pending is None else _task(connection, rater, pending)
    return Progress(code, done, len(rows), task)


def _task(connection: sqlite3.Connection, rater: int, slot: sqlite3.Row) -> Task:
    row = connection.execute(
        "SELECT i.prompt, i.sketch, oa.image AS image_a, ob.image AS image_b FROM comparisons c "
        "JOIN items i ON i.id = c.item "
        "JOIN outputs oa ON oa.item = c.item AND oa.variant = c.variant_a "
        "JOIN outputs ob ON ob.item = c.item AND ob.variant = c.variant_b WHERE c.id = ?",
        (slot["comparison"],)).fetchone()
    left, right = (row["image_a"], row["image_b"]) if slot["a_left"] else (row["image_b"], row["image_a"])
    answered = connection.execute("SELECT criterion, choice FROM answers WHERE rater = ? AND comparison = ?",
                                  (rater, slot["comparison"])).fetchall()
    return Task(slot["comparison"], slot["position"] + 1, row["prompt"], row["sketch"], left, right,
                {answer["criterion"]: answer["choice"] for answer in answered})


def record_answer(connection: sqlite3.Connection, rater: int, comparison: int, criterion: str, choice: str) -> bool:
    """Store one answer (its own commit); False if this exact answer was already stored.

    Raises UnknownComparison for a comparison outside the rater's queue, StudyError for an unknown criterion or
    choice, and AnswerConflict when the question already has a different answer (the first one stands).
    """
    if choice not in CHOICES:
        raise StudyError(f"choice must be one of {', '.join(CHOICES)}, got {choice!r}")
    if not _storable(comparison):
        raise UnknownComparison(f"comparison {comparison} is not in this rater's queue")
    names = criteria(connection)
    if criterion not in names:
        raise StudyError(f"criterion must be one of {', '.join(names)}, got {criterion!r}")
    if connection.execute("SELECT 1 FROM assignments WHERE rater = ? AND comparison = ?",
                          (rater, comparison)).fetchone() is None:
        raise UnknownComparison(f"comparison {comparison} is not in this rater's queue")
    cursor = connection.execute(
        "INSERT INTO answers (rater, comparison, criterion, choice, answered) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (rater, comparison, criterion) DO NOTHING", (rater, comparison, criterion, choice, _now()))
    if cursor.rowcount:
        return True
    stored = connection.execute("SELECT choice FROM answers WHERE rater = ? AND comparison = ? AND criterion = ?",
                                (rater, comparison, criterion)).fetchone()["choice"]
    if stored != choice:
        raise AnswerConflict(f"{criterion} of comparison {comparison} was already answered {stored!r}; "
                             "the first answer stands")
    return False


def image_png(connection: sqlite3.Connection, image: int) -> bytes | None:
    """The PNG bytes of an image of the study (None for an id it does not have)."""
    if not _storable(image):
        return None
    row = connection.execute("SELECT png FROM images WHERE id = ?", (image,)).fetchone()
    return None if row is None else bytes(row["png"])


def pairs(connection: sqlite3.Connection) -> list[tuple[str, str]]:
    """The study's (variant_a, variant_b) pairs, in the order of its comparisons."""
    rows = connection.execute("SELECT variant_a, variant_b FROM comparisons GROUP BY variant_a, variant_b "
                              "ORDER BY MIN(id)")
    return [(row["variant_a"], row["variant_b"]) for row in rows]


def answers(connection: sqlite3.Connection) -> Iterator[dict[str, Any]]:
    """Every answer with its comparison's variants and whether variant_a was on the left (for the analysis)."""
    rows = connection.execute(
        "SELECT r.number AS rater, a.comparison, a.criterion, a.choice, s.a_left, c.item, c.variant_a, c.variant_b "
        "FROM answers a JOIN raters r ON r.id = a.rater "
        "JOIN assignments s ON s.rater = a.rater AND s.comparison = a.comparison "
        "JOIN comparisons c ON c.id = a.comparison ORDER BY a.id")
    for row in rows:
        yield dict(row)


def _storable(number: int) -> bool:
    """Whether `number` fits an SQLite INTEGER (an id beyond it names no row; binding it would raise)."""
    return isinstance(number, int) and MIN_INTEGER <= number <= MAX_INTEGER


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
