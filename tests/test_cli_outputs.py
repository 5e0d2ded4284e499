"""Outputs of the command line never destroy, hide or half-write a user's data.

Every command that writes (``run --out``, ``sweep --out``, ``report --html``,
``validation-report --html``, ``schema -o``, ``backcast --csv``) is pointed at what a user
may already have there: a folder of their own files, a plain file, a path under a plain file,
a read-only folder, a file system that fails mid-write. Each must exit 2 with one line naming
the path, and leave the tree byte for byte as it was (a snapshot of names, kinds, modes and
content hashes before and after). ``--force`` replaces only an earlier output of the same
kind and leaves no temporary sibling. Read-only folders are real: a read-only bind mount in
a private mount namespace (``unshare --mount``; the tests run as root), in which the command
runs as a subprocess.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, event, example, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from conftest import TINY_PATH
from retwin.cli import main

pytestmark = pytest.mark.io  # files, the console or the service: see conftest.py

COMMANDS = ("run", "sweep", "report", "validation-report", "schema", "backcast")
FILE_COMMANDS = ("report", "validation-report", "schema", "backcast")
CLI = "import sys; from retwin.cli import main; sys.exit(main(sys.argv[1:]))"


# --- helpers ---------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``root`` (not following links): kind, mode and content hash."""
    snap: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st_ = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st_.st_mode):
                snap[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st_.st_mode):
                snap[rel] = ("dir", stat.S_IMODE(st_.st_mode))
            elif stat.S_ISREG(st_.st_mode):
                snap[rel] = ("file", stat.S_IMODE(st_.st_mode),
                             hashlib.sha256(p.read_bytes()).hexdigest())
            else:
                snap[rel] = ("other", stat.S_IFMT(st_.st_mode))
    return snap


def argv(command: str, target: str, ctx: dict[str, Path], force: bool = False) -> list[str]:
    """The command line that writes ``command``'s output to ``target``."""
    args = {
        "run": ["run", str(TINY_PATH), "--out", target],
        "sweep": ["sweep", str(ctx["spec"]), "--out", target],
        "report": ["report", str(ctx["result"]), "--html", target],
        "validation-report": ["validation-report", "--html", target],
        "schema": ["schema", "-o", target],
        "backcast": ["backcast", "--csv", target],
    }[command]
    return args + (["--force"] if force and command != "sweep" else [])


def one_error_line(err: str, target: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and target in lines[0], lines[0]
    return lines[0]


def user_tree(root: Path) -> Path:
    """A folder as a user may have it: files, a sub-folder, a hidden ``.tmp`` of theirs."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "folder").mkdir()
    (root / "folder" / "notes.txt").write_text("mine, keep me\n")
    (root / "folder" / "sub").mkdir()
    (root / "folder" / "sub" / "data.bin").write_bytes(bytes(range(256)))
    (root / "folder" / ".tmp").mkdir()
    (root / "folder" / ".tmp" / "draft.txt").write_text("a draft\n")
    (root / "hidden").mkdir()
    (root / "hidden" / ".tmp").mkdir()
    (root / "hidden" / ".tmp" / "draft.txt").write_text("only hidden things here\n")
    (root / "file").write_text("a plain file of mine\n")
    os.chmod(root / "file", 0o640)
    return root


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An earlier result directory (run --out), an earlier sweep directory, a study spec."""
    base = tmp_path_factory.mktemp("outputs")
    spec = base / "study.yaml"
    spec.write_text(yaml.safe_dump({"name": "outputs", "base": str(TINY_PATH),
                                    "replications": 1, "record": "annual"}))
    result, sweep = base / "result", base / "sweep"
    assert main(["run", str(TINY_PATH), "--out", str(result)]) == 0
    assert main(["sweep", str(spec), "--out", str(sweep)]) == 0
    return {"spec": spec, "result": result, "sweep": sweep}


def run_readonly(ro: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a private mount namespace where ``ro`` is a read-only bind mount."""
    script = ('mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" || exit 98; '
              'if touch "$1/.probe" 2>/dev/null; then echo "$1 is writable" >&2; exit 99; fi; '
              'shift; exec "$@"')
    return subprocess.run(["unshare", "--mount", "--", "sh", "-c", script, "sh", str(ro),
                           sys.executable, "-c", CLI, *args],
                          capture_output=True, text=True, timeout=600, check=False)


# --- what a user already has at the path -------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("where", ["folder", "hidden", "file", "under-file", "under-file-deep"])
def test_refused_and_untouched(command: str, where: str, ctx: dict[str, Path], tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    root = user_tree(tmp_path / "home")
    target = str(root / {"folder": "folder", "hidden": "hidden", "file": "file",
                         "under-file": "file/out", "under-file-deep": "file/a/b/out"}[where])
    before = snapshot(root)
    capsys.readouterr()
    assert main(argv(command, target, ctx)) == 2
    err = capsys.readouterr().err
    line = one_error_line(err, target)
    if where.startswith("under-file"):
        assert f"{root / 'file'} is a file, not a folder" in line
    assert snapshot(root) == before


@pytest.mark.parametrize("command", ("run", "sweep"))
def test_a_folder_output_never_replaces_a_file_or_a_foreign_folder(
        command: str, ctx: dict[str, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    root = user_tree(tmp_path / "home")
    # a result directory with a file of the user's put in it is no longer only a result
    shutil.copytree(ctx["result"], root / "result")
    (root / "result" / "my-notes.md").write_text("notes beside the result\n")
    before = snapshot(root)
    for name in ("file", "folder", "result"):
        assert main(argv(command, str(root / name), ctx, force=True)) == 2
        line = one_error_line(capsys.readouterr().err, str(root / name))
        if command == "run" and name == "result":
            assert "(my-notes.md)" in line  # what is in the way, not the result's own files
    assert snapshot(root) == before


@pytest.mark.parametrize("command", FILE_COMMANDS)
def test_a_file_output_replaces_a_file_only_with_force(command: str, ctx: dict[str, Path],
                                                       tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    root = user_tree(tmp_path / "home")
    target = str(root / "file")
    before = snapshot(root)
    assert main(argv(command, target, ctx)) == 2
    line = one_error_line(capsys.readouterr().err, target)
    assert line.endswith("exists; add --force to replace it")
    assert snapshot(root) == before
    assert main(argv(command, target, ctx, force=True)) == 0
    after = snapshot(root)
    assert after["file"][2] != before["file"][2]
    assert after["file"][1] == 0o640  # the replaced file's permissions are kept
    assert {k: v for k, v in after.items() if k != "file"} == \
        {k: v for k, v in before.items() if k != "file"}  # no temporary sibling either
    # never onto a folder, a link or a special file, --force or not
    os.symlink(root / "file", root / "link")
    os.mkfifo(root / "fifo")
    before = snapshot(root)
    for name in ("folder", "link", "fifo"):
        assert main(argv(command, str(root / name), ctx, force=True)) == 2
        one_error_line(capsys.readouterr().err, str(root / name))
    assert snapshot(root) == before


@pytest.mark.parametrize("command", ("report", "validation-report", "backcast"))
def test_a_refused_file_output_is_told_before_the_work_starts(command: str, ctx: dict[str, Path],
                                                              tmp_path: Path) -> None:
    """The commands that compute for seconds before they write refuse their target first:
    the refusal comes before the engine is even imported."""
    root = user_tree(tmp_path / "home")
    target = str(root / "file")
    check = ("import sys; from retwin.cli import main; code = main(sys.argv[1:]); "
             "print(sorted(m for m in sys.modules if m.startswith('retwin.engine')))")
    proc = subprocess.run([sys.executable, "-c", check, *argv(command, target, ctx)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert one_error_line(proc.stderr, target).endswith("exists; add --force to replace it")
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("command", COMMANDS)
def test_read_only_folder(command: str, ctx: dict[str, Path], tmp_path: Path) -> None:
    root = user_tree(tmp_path / "ro")
    before = snapshot(root)
    for target in (root / "new", root / "new" / "deeper" / "out", root / "folder" / "x"):
        proc = run_readonly(root, argv(command, str(target), ctx))
        assert proc.returncode == 2, proc.stderr
        line = one_error_line(proc.stderr, str(target))
        assert "Read-only file system" in line
    assert snapshot(root) == before


def test_read_only_folder_holding_earlier_outputs(ctx: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "ro"
    root.mkdir()
    shutil.copytree(ctx["result"], root / "result")
    shutil.copytree(ctx["sweep"], root / "sweep")
    (root / "r.html").write_text("an earlier report\n")
    before = snapshot(root)
    for args in (argv("run", str(root / "result"), ctx, force=True),
                 argv("sweep", str(root / "sweep"), ctx),
                 argv("report", str(root / "r.html"), ctx, force=True)):
        proc = run_readonly(root, args)
        assert proc.returncode == 2, proc.stderr
        assert "Read-only file system" in one_error_line(proc.stderr, args[args.index(
            "--html" if "--html" in args else "--out") + 1])
    assert snapshot(root) == before


@pytest.mark.parametrize("command", COMMANDS)
def test_a_write_that_fails_midway_leaves_nothing(command: str, ctx: dict[str, Path],
                                                  tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The file system fails after every check passed (here: no space when flushing)."""
    root = user_tree(tmp_path / "home")
    target = str(root / "new" / "deeper" / "out")
    before = snapshot(root)

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    assert main(argv(command, target, ctx)) == 2
    assert "No space left on device" in one_error_line(capsys.readouterr().err, target)
    assert snapshot(root) == before  # no temporary, no half output, no folder made for it


# --- replacing an earlier output -----------------------------------------------------------------


def _no_temporaries(folder: Path) -> None:
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".")]
    assert leftovers == []


@pytest.mark.parametrize("swap", ["exchange", "two renames"])
def test_force_replaces_an_earlier_result(swap: str, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    if swap == "two renames":  # where the system cannot swap two names atomically
        import retwin._files

        monkeypatch.setattr(retwin._files, "_renameat2_fn", lambda: None)
    out = tmp_path / "res"
    assert main(["run", str(TINY_PATH), "--out", str(out), "--seed", "1"]) == 0
    assert main(["run", str(TINY_PATH), "--out", str(out), "--seed", "2"]) == 2
    assert one_error_line(capsys.readouterr().err, str(out)).endswith(
        "holds an earlier result; add --force to replace it")
    assert json.loads((out / "manifest.json").read_text())["seed"] == 1
    assert main(["run", str(TINY_PATH), "--out", str(out), "--seed", "2", "--force",
                 "--format", "csv"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["seed"] == 2 and m["format"] == "csv"
    assert sorted(p.name for p in out.iterdir()) == sorted(m["files"] + ["manifest.json",
                                                                         "scenario.json"])
    assert [p.name for p in tmp_path.iterdir()] == ["res"]
    _no_temporaries(tmp_path)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~_umask()  # the usual folder mode


def test_a_failed_swap_puts_the_earlier_result_back(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Without an atomic swap the earlier result is moved aside, the new one moved in; when
    that second rename fails, the earlier result is back at its name and nothing else stays."""
    import retwin._files

    out = tmp_path / "res"
    assert main(["run", str(TINY_PATH), "--out", str(out), "--seed", "1"]) == 0
    before = snapshot(tmp_path)
    monkeypatch.setattr(retwin._files, "_renameat2_fn", lambda: None)
    real_rename, calls = os.rename, []

    def second_fails(src: Any, dst: Any) -> None:
        calls.append((src, dst))
        if len(calls) == 2:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", second_fails)
    assert main(["run", str(TINY_PATH), "--out", str(out), "--seed", "2", "--force"]) == 2
    assert os.strerror(errno.EIO) in one_error_line(capsys.readouterr().err, str(out))
    assert len(calls) == 3  # aside, in (fails), back
    assert snapshot(tmp_path) == before


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_an_empty_folder_and_missing_folders_are_fine(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["run", str(TINY_PATH), "--out", str(tmp_path / "empty")]) == 0
    assert (tmp_path / "empty" / "manifest.json").is_file()
    assert main(["schema", "-o", str(tmp_path / "a" / "b" / "schema.json")]) == 0
    assert json.loads((tmp_path / "a" / "b" / "schema.json").read_text())["title"] == "Scenario"
    _no_temporaries(tmp_path / "a" / "b")


def test_a_sweep_resumes_its_own_folder_only(ctx: dict[str, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    sweep = tmp_path / "sweep"
    shutil.copytree(ctx["sweep"], sweep)
    assert main(argv("sweep", str(sweep), ctx)) == 0
    assert "already done, kept" in capsys.readouterr().err
    # what an interrupted start leaves (the lock, retwin's temporary files) is taken over
    fresh = tmp_path / "fresh"
    (fresh / ".tmp").mkdir(parents=True)
    (fresh / ".lock").touch()
    (fresh / ".tmp" / ".points.parquet.0123abcd.tmp").write_bytes(b"half")
    assert main(argv("sweep", str(fresh), ctx)) == 0
    assert (fresh / "manifest.json").is_file() and not (fresh / ".tmp").exists()


# --- hostile targets ---------------------------------------------------------------------------

_NAMES = ["file", "folder", "hidden", "empty", "result", "sweep", "link-file", "link-folder",
          "dangling", "fifo", "new", "new folder", "ünï 中文", "-dash", "line\nbreak", ".",
          "..", ".tmp", "a" * 300, "x:smile:[b]", "nul\x00byte"]


@st.composite
def _targets(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.sampled_from(_NAMES), min_size=1, max_size=3))
    rel = "/".join(parts) + draw(st.sampled_from(["", "/"]))
    norm = os.path.normpath(rel)
    assume(norm != ".." and not norm.startswith("../"))  # stays inside the sandbox
    return "./" + rel if rel.startswith("-") else rel  # as a user types it after an option


@pytest.fixture(scope="module")
def sandbox_template(ctx: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = user_tree(tmp_path_factory.mktemp("template") / "t")
    (root / "empty").mkdir()
    shutil.copytree(ctx["result"], root / "result")
    shutil.copytree(ctx["sweep"], root / "sweep")
    os.symlink("file", root / "link-file")
    os.symlink("folder", root / "link-folder")
    os.symlink("nowhere", root / "dangling")
    return root


def _allowed(rel: str, target: Path) -> bool:
    """A change at ``rel`` is the output itself, inside it, or a folder made on the way."""
    p = Path(rel)
    return p == target or target in p.parents or p in target.parents


@hyp_settings(suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow])
@given(target=_targets(), command=st.sampled_from(["run", "sweep", "report", "schema"]),
       force=st.booleans())
@example(target="a" * 300, command="sweep", force=False)  # a name too long
@example(target="nul\x00byte", command="run", force=False)
@example(target="result", command="run", force=True)  # replaced
@example(target="link-folder/new/", command="run", force=False)  # written through a link
@example(target="fifo", command="schema", force=True)  # never opened
@example(target="line\nbreak/x:smile:[b]", command="report", force=False)
def test_hostile_targets(target: str, command: str, force: bool, ctx: dict[str, Path],
                         sandbox_template: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = Path(tempfile.mkdtemp(dir=sandbox_template.parent)).resolve()
    try:
        root = base / "box"
        shutil.copytree(sandbox_template, root, symlinks=True)
        os.mkfifo(root / "fifo")
        before = snapshot(root)
        capsys.readouterr()
        cwd = os.getcwd()
        os.chdir(root)  # the target is relative, as typed
        try:
            code = main(argv(command, target, ctx, force=force))
        finally:
            os.chdir(cwd)
        err = capsys.readouterr().err
        assert code in (0, 2), err
        assert "Traceback" not in err
        event(f"exit {code}")
        after = snapshot(root)
        if code == 2:
            assert len(err.strip().splitlines()) == 1, err
            assert err.startswith("error: ")
            assert after == before
            return
        # written: nothing changed but the target (as the system resolves it) and the
        # folders made on the way to it; no temporary sibling stands
        lexical = Path(os.path.normpath(root / target))
        physical = Path(os.path.realpath(lexical.parent)) / lexical.name
        changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
        rel_target = physical.relative_to(root)
        assert all(_allowed(k, rel_target) for k in changed), (changed, rel_target)
        assert str(rel_target) in after
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --- tables: drawn as plain text where rich would draw the same -----------------------------

_CELL = st.lists(st.sampled_from([*"ab Z09,.%–·[]/亿元é👍\n\t\x07\u200b", "[dim]", "[/dim]",
                                  "[b]", "[/b]", "354,137", "demand 83%"]),
                 max_size=8).map("".join)


@hyp_settings(max_examples=300, deadline=None)
@given(title=st.one_of(st.none(), _CELL), pad_edge=st.booleans(),
       columns=st.lists(st.tuples(_CELL, st.sampled_from(["left", "right"]), st.booleans()),
                        min_size=1, max_size=5),
       rows=st.lists(st.lists(_CELL, max_size=5), max_size=6),
       width=st.integers(min_value=10, max_value=90))
def test_tables_print_as_rich_draws_them(title: str | None, pad_edge: bool,
                                         columns: list[tuple[str, str, bool]],
                                         rows: list[list[str]], width: int) -> None:
    """A table of the commands prints the bytes rich's ``Table`` prints, however it is then
    drawn (as plain text, or by rich when it must shrink, wrap or style)."""
    from rich.console import Console
    from rich.errors import MarkupError

    from retwin.cli import _table

    t = _table(title=title, title_justify="left", show_lines=False, pad_edge=pad_edge)
    for header, justify, no_wrap in columns:
        t.add_column(header, justify=justify, style="bold", no_wrap=no_wrap)
    for row in rows:
        t.add_row(*row[: len(columns)])
    printed = []
    for table in (t, t.rich()):
        buf = io.StringIO()
        console = Console(file=buf, highlight=False, emoji=False, width=width)
        try:
            console.print(table)
        except MarkupError:  # bad markup is refused either way (the first cell found)
            printed.append("bad markup")
            continue
        printed.append(buf.getvalue())
    assert printed[0] == printed[1]


def test_the_run_command_draws_its_kpi_table_without_rich(capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """``retwin run``'s table of KPIs (its largest) is drawn as plain text, not by rich."""
    from retwin import cli

    drawn_by_rich: list[str] = []
    rich = cli._Table.rich

    def spy(self: Any) -> Any:
        drawn_by_rich.append(str(self.options.get("title")))
        return rich(self)

    monkeypatch.setattr(cli._Table, "rich", spy)
    assert cli.main(["run", "tiny"]) == 0
    assert "annual KPIs" in capsys.readouterr().out
    assert not [t for t in drawn_by_rich if "annual KPIs" in t], drawn_by_rich


# --- the console: text and tables that rich would write as they are are written directly ----

_TEXT = st.lists(st.sampled_from([*"ab Z09,.%–·[]/亿元é👍\n\t\x07\u200b", "[dim]", "[/dim]",
                                  "  ", "354,137", "demand 83%", "x" * 40]),
                 max_size=12).map("".join)
#: Variables by which rich would write to a stream that is not a terminal as to one.
FORCING = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")


def _printed_both_ways(obj: Any, markup: bool | None, width: int | None, soft_wrap: bool,
                       stderr: bool) -> tuple[str, str]:
    """What the command's console prints of ``obj``, and what rich's prints, to a stream
    that is not a terminal."""
    from rich.console import Console
    from rich.errors import MarkupError

    from retwin import cli

    name = "stderr" if stderr else "stdout"
    printed = []
    for ours in (True, False):
        buf, stream = io.StringIO(), getattr(sys, name)
        setattr(sys, name, buf)
        try:
            console: Any = cli._Console(stderr=stderr, width=width, soft_wrap=soft_wrap) \
                if ours else Console(stderr=stderr, highlight=False, emoji=False, width=width,
                                     soft_wrap=soft_wrap)
            console.print(obj, markup=markup, emoji=False)
        except MarkupError:
            buf.write("bad markup")
        finally:
            setattr(sys, name, stream)
        printed.append(buf.getvalue())
    return printed[0], printed[1]


@pytest.fixture
def no_forcing(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in FORCING:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("no_forcing")
@hyp_settings(max_examples=300, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_TEXT, markup=st.sampled_from([None, True, False]),
       width=st.integers(min_value=5, max_value=60), soft_wrap=st.booleans())
def test_the_console_prints_text_as_rich_does(text: str, markup: bool | None, width: int,
                                              soft_wrap: bool) -> None:
    """Text the commands print (on stdout with a width, on stderr without wrapping) is the
    bytes rich's console prints, whether it is written directly or by rich."""
    for stderr, w in ((False, width), (True, None)):
        ours, rich = _printed_both_ways(text, markup, w, soft_wrap or stderr, stderr)
        assert ours == rich


@pytest.mark.usefixtures("no_forcing")
@hyp_settings(max_examples=100, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(title=st.one_of(st.none(), _TEXT),
       rows=st.lists(st.lists(_CELL, min_size=2, max_size=2), max_size=4),
       width=st.integers(min_value=10, max_value=90))
def test_the_console_prints_tables_as_rich_does(title: str | None, rows: list[list[str]],
                                                width: int) -> None:
    from retwin.cli import _table

    t = _table(title=title, title_justify="left", pad_edge=False)
    t.add_column("KPI", style="bold")
    t.add_column("2024", justify="right")
    for row in rows:
        t.add_row(*row)
    ours, rich = _printed_both_ways(t, None, width, False, False)
    assert ours == rich


@pytest.mark.parametrize("forcing", FORCING)
def test_a_console_forced_to_be_a_terminal_prints_through_rich(
        forcing: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where rich would treat a stream that is not a terminal as one (and write styles),
    the command's console leaves it to rich."""
    from retwin.cli import _table

    t = _table(title="Targets", title_justify="left", pad_edge=False)
    t.add_column("KPI", style="bold")
    t.add_row("value")
    for name in FORCING:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(forcing, "1")
    for obj in (t, "plain text"):
        ours, rich = _printed_both_ways(obj, None, 40, False, False)
        assert ours == rich
    if forcing != "TTY_INTERACTIVE":  # (which only says whether to animate)
        assert "\x1b[" in _printed_both_ways(t, None, 40, False, False)[1]


def test_commands_print_without_rich_where_it_would_write_text_as_it_is(
        tmp_path: Path) -> None:
    """Printing lines to a file or a pipe needs neither rich's console nor its progress bar
    (their import was ~20 ms of a command): ``retwin validate`` runs where they cannot be
    imported, and ``retwin run`` where the progress bar cannot; both print what rich
    prints (it does, when told the output is no terminal)."""
    env = {k: v for k, v in os.environ.items() if k not in FORCING}
    for blocked, args in ((("rich.console", "rich.progress"), ["validate", str(TINY_PATH)]),
                          (("rich.progress",), ["run", "tiny"])):
        code = ("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in blocked)
                + f"from retwin.cli import main\nsys.exit(main({args!r}))\n")
        plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               env=env, timeout=300)
        assert plain.returncode == 0, plain.stderr[-2000:]
        by_rich = subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True,
                                 text=True, env={**env, "TTY_COMPATIBLE": "0"}, timeout=300)
        assert by_rich.returncode == 0, by_rich.stderr[-2000:]
        assert plain.stdout == by_rich.stdout and plain.stdout
