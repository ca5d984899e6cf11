"""``restore_command = dbprotect wal fetch`` run for real by a non-root restored server.

PostgreSQL refuses to run as root, so the server runs as another OS user (``postgres`` here) and that
user runs ``restore_command``. When the tests run as root, every other PITR test takes the *relay* path
(the root process serves the WAL through FIFOs); this one runs ``dbprotect restore --to-time`` itself as
``postgres``, so the server's ``restore_command`` is ``dbprotect --config … wal fetch %f %p`` and every WAL
file comes through it. (The embedded test servers run as ``embedded_postgres`` when the tests are root;
the python this venv was built from lives under /root, unreadable to other users, so the test gives the
server user an installation it can run: the system python of the same version over this venv's packages.)

A wrapper named ``dbprotect`` beside that python (where :func:`~dbprotect.core.ops.continuous.dbprotect_command`
looks) records who runs each fetch and with what argv, then runs the real CLI: the fetches must run as the
server user, by an absolute path, with no secret on their command line, and must serve every file the
server restored. A missing or wrong key in the server's environment stops recovery with the fetch's own
one-line error named in what the restore reports, never a promoted server.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dbprotect.core.continuous.base import take_base_backup
from dbprotect.core.continuous.pitr import restore_to_point
from dbprotect.core.crypto import parse_identity
from dbprotect.core.errors import DbprotectError
from dbprotect.core.ops.continuous import fetch_command
from dbprotect.core.pg.tools import require_tool_for_server
from dbprotect.core.store.filesystem import FilesystemStorage
from dbprotect_tests.continuous_helpers import continuous_setup, receiving, segment_of, switch_wal
from dbprotect_tests.test_continuous_pitr import _insert, _notes, _open_for_server
from dbprotect_tests.test_continuous_wal import switch_and_wait_shipped

pytestmark = pytest.mark.slow

#: This file's rows on the shared WAL server (see ``_insert``) and its note prefix.
PREFIX = "nonroot-fetch-"
MAIN = "import sys; from dbprotect.cli.app import main; sys.argv[0] = 'dbprotect'; main()"


def _server_user() -> pwd.struct_passwd | None:
    """Who runs the restore and so the restored server: ``postgres`` when the tests are root, else us."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root without a 'postgres' OS user to restore as")


def _as_user(user: pwd.struct_passwd | None) -> list[str]:
    return [shutil.which("runuser") or "/usr/sbin/runuser", "-u", user.pw_name, "--"] if user else []


def _give(path: Path, user: pwd.struct_passwd | None) -> None:
    if user:
        os.chown(path, user.pw_uid, user.pw_gid)


def _installation(folder: Path, user: pwd.struct_passwd | None, log: Path) -> Path:
    """A python the server user can run, over this venv's packages, with a recording ``dbprotect`` beside
    it; returns the python."""
    base = Path(sys._base_executable)  # type: ignore[attr-defined]
    if user:
        found = shutil.which(f"python{sys.version_info.major}.{sys.version_info.minor}", path="/usr/bin:/usr/local/bin")
        if not found:
            pytest.skip("no system python of this version for the non-root user to run dbprotect with")
        base = Path(found)
    (folder / "bin").mkdir(parents=True)
    (folder / "pyvenv.cfg").write_text(f"home = {base.parent}\ninclude-system-site-packages = false\n",
                                       encoding="utf-8")
    (folder / "lib").symlink_to(Path(sys.prefix) / "lib")
    python = folder / "bin" / "python"
    python.symlink_to(base)
    wrapper = folder / "bin" / "dbprotect"
    wrapper.write_text(
        "#!/bin/sh\n"
        "# records how restore_command runs dbprotect (no value of the environment), then runs the real one\n"
        f"{{ echo \"uid=$(id -u) argv0=$0\"; printf 'arg=%s\\n' \"$@\"; env | sed 's/=.*//; s/^/env=/'; "
        f"case \"$TEST_RAW_IDENTITY\" in @*) echo identity=file;; '') echo identity=none;; *) echo identity=inline;; "
        f"esac; echo end; }} >> {log}\n"
        f"exec {python} -c \"{MAIN}\" \"$@\"\n", encoding="utf-8")
    wrapper.chmod(0o755)
    probe = subprocess.run([*_as_user(user), str(python), "-c", "import dbprotect.cli.app"], capture_output=True,
                           text=True, env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    if probe.returncode != 0:
        pytest.skip(f"the server user cannot run dbprotect from this venv: {probe.stderr.strip()[-200:]}")
    return python


def _calls(log: Path) -> list[dict[str, list[str]]]:
    calls: list[dict[str, list[str]]] = []
    current: dict[str, list[str]] = {}
    for line in log.read_text(encoding="utf-8").splitlines():
        if line == "end":
            calls.append(current)
            current = {}
            continue
        for part in line.split(" ") if line.startswith("uid=") else [line]:
            key, _, value = part.partition("=")
            current.setdefault(key, []).append(value)
    return calls


def test_a_non_root_server_fetches_every_wal_through_dbprotect_wal_fetch(
        wal_server: str, write_config: Callable[..., Path], tmp_path: Path, age_keys: tuple[str, str],
        other_age_keys: tuple[str, str]) -> None:
    user = _server_user()
    slot = "dbprotect_test_nonroot_fetch"
    config_path, config, storage = continuous_setup(write_config, wal_server, slot, tmp_path)
    with receiving(config_path, wal_server, slot, tmp_path / "receiver.log"):
        take_base_backup(database="shop", dsn=wal_server, storage=storage, recipients=config.keys.raw.recipients,
                         incremental=False)
        switch_wal(wal_server)  # the rows go into a segment after the base's end
        time.sleep(1.1)  # the base's finished_at stays before the target
        _insert(wal_server, PREFIX + "a", range(1_150_000, 1_150_200))
        target, target_lsn = _insert(wal_server, PREFIX + "b", range(1_150_200, 1_150_210))
        target_segment = segment_of(wal_server, target_lsn)
        time.sleep(1.1)
        _insert(wal_server, PREFIX + "c", range(1_150_210, 1_150_211))  # after the target
        switch_and_wait_shipped(wal_server, storage)

    # what the restoring user holds: the store and the config to read (it writes its audit record), its
    # own key file readable by it alone, a home, and a folder for the new data directory
    _open_for_server(tmp_path)
    for path in [tmp_path / "store", *(tmp_path / "store").rglob("*")]:
        _give(path, user)
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    key_file, wrong_key_file = keys / "raw-backups.agekey", keys / "other.agekey"
    for path, text in ((key_file, age_keys[0]), (wrong_key_file, other_age_keys[0])):
        path.write_text(text + "\n", encoding="utf-8")
        path.chmod(0o600)
        _give(path, user)
    _give(keys, user)
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    _give(home, user)
    fetch_log = home / "fetches.log"
    python = _installation(tmp_path / "install", user, fetch_log)
    basic_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
    data_dir = home / "restored"

    done = subprocess.run([*_as_user(user), "env", "-i", *[f"{k}={v}" for k, v in basic_env.items()],
                           f"TEST_RAW_IDENTITY=@{key_file}", str(python), "-c", MAIN, "--config", str(config_path),
                           "restore", "shop", "--to-time", target.isoformat(), "--data-dir", str(data_dir), "--json"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    pg_ctl = require_tool_for_server("pg_ctl", 18, None).path
    try:
        dsn = f"postgresql://postgres@/postgres?host={result['socket_dir']}&port={result['port']}"
        assert _notes(dsn, PREFIX) == {PREFIX + "a": 200, PREFIX + "b": 10}

        # the server and so its restore_command ran as the restoring user, with no secret but a key file path
        postmaster = int((data_dir / "postmaster.pid").read_text(encoding="utf-8").split()[0])
        server_uid = Path(f"/proc/{postmaster}").stat().st_uid
        assert server_uid == (user.pw_uid if user else os.geteuid()) and server_uid != 0
        environ = dict(item.split("=", 1) for item in
                       Path(f"/proc/{postmaster}/environ").read_bytes().decode().split("\0") if "=" in item)
        assert environ["TEST_RAW_IDENTITY"] == f"@{key_file}"
        assert not [name for name in environ if name.endswith("_DSN")]
        assert data_dir.stat().st_mode & 0o777 == 0o700 and data_dir.stat().st_uid == server_uid

        conf = (data_dir / "postgresql.auto.conf").read_text(encoding="utf-8")
        [restore_command] = re.findall(r"^restore_command = '(.*)'$", conf, flags=re.M)
        assert restore_command.startswith(f"{python.parent / 'dbprotect'} --config ")
        assert " wal fetch %f %p --database shop" in restore_command and "AGE-SECRET-KEY" not in conf

        calls = _calls(fetch_log)
        assert calls, "restore_command never ran dbprotect"
        for call in calls:
            assert call["uid"] == [str(server_uid)] and Path(call["argv0"][0]).is_absolute()
            assert call["arg"][:4] == ["--config", str(config_path.resolve()), "wal", "fetch"]
            assert call["identity"] == ["file"] and not [n for n in call.get("env", []) if n.endswith("_DSN")]
            assert not any("AGE-SECRET-KEY" in arg.upper() for arg in call["arg"])
        fetched = {call["arg"][4] for call in calls}
        server_log = (data_dir / "pitr-server.log").read_text(encoding="utf-8", errors="replace")
        restored = set(re.findall(r'restored log file "([0-9A-F]{24}|[0-9A-F]{8}\.history)" from archive', server_log))
        assert restored and restored <= fetched, (restored, fetched)
        # every restored segment landed in pg_wal owned by the server user (no root-owned file left behind)
        assert all(path.stat().st_uid == server_uid for path in (data_dir / "pg_wal").iterdir())
    finally:
        subprocess.run([*_as_user(user), str(pg_ctl), "-D", str(data_dir), "-m", "immediate", "stop"],
                       capture_output=True)

    # a missing or a wrong key where restore_command runs, or a damaged segment past the point where the
    # server is consistent (open for reads, so already "started"): recovery stops short of the target, the
    # restore fails naming the fetch's own error, and nothing is left behind (this process holds the key)
    [damaged] = (tmp_path / "store").rglob(f"{target_segment}.zst.age")
    content = bytearray(damaged.read_bytes())
    content[len(content) // 2] ^= 0x01
    damaged.write_bytes(bytes(content))
    failing = (
        "import json, sys, pyrage; from pathlib import Path; from datetime import datetime\n"
        "from dbprotect.core.config.load import load_config\n"
        "from dbprotect.core.continuous.pitr import restore_to_point\n"
        "from dbprotect.core.errors import DbprotectError\n"
        "from dbprotect.core.ops.continuous import fetch_command\n"
        "from dbprotect.core.store.filesystem import FilesystemStorage\n"
        "config = load_config(sys.argv[1]); out = {}\n"
        "for case, env in json.loads(sys.argv[2]).items():\n"
        "    data = Path(sys.argv[3]) / case\n"
        "    try:\n"
        "        restore_to_point(storage=FilesystemStorage(sys.argv[4]), database='shop', data_dir=data,\n"
        "                         identity=pyrage.x25519.Identity.from_str(sys.argv[5]),\n"
        "                         restore_command=fetch_command(config, 'shop'),\n"
        "                         to_time=datetime.fromisoformat(sys.argv[6]), server_environ=env)\n"
        "        out[case] = 'promoted'\n"
        "    except DbprotectError as exc:\n"
        "        out[case] = [exc.one_line(), data.exists()]\n"
        "print(json.dumps(out))\n")
    cases = {"missing": basic_env, "wrong": {**basic_env, "TEST_RAW_IDENTITY": f"@{wrong_key_file}"},
             "damaged": {**basic_env, "TEST_RAW_IDENTITY": f"@{key_file}"}}
    started = time.monotonic()
    done = subprocess.run([*_as_user(user), "env", "-i", *[f"{k}={v}" for k, v in basic_env.items()],
                           str(python), "-c", failing, str(config_path), json.dumps(cases), str(home),
                           str(tmp_path / "store"), age_keys[0], target.isoformat()],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout.splitlines()[-1])
    assert all(outcome[case][1] is False for case in cases)  # never promoted; the half-recovered folder is gone
    assert "restore_command failed: error[DBP008]: $TEST_RAW_IDENTITY is not set" in outcome["missing"][0]
    assert "restore_command failed: error[DBP007]: WAL " in outcome["wrong"][0]
    assert "does not decrypt" in outcome["wrong"][0]
    assert f"restore_command failed: error[DBP007]: WAL {target_segment}" in outcome["damaged"][0]
    assert "\n" not in "".join(outcome[case][0] for case in cases)
    assert age_keys[0] not in done.stdout + done.stderr and other_age_keys[0] not in done.stdout + done.stderr
    assert time.monotonic() - started < 300

    # the same damaged segment served by the relay (root restores, drills): the relay's failure reaches the
    # server log in the fetch's own form, so the restore names it the same way
    relayed_dir = tmp_path / "relayed"
    with pytest.raises(DbprotectError) as relayed:
        restore_to_point(storage=FilesystemStorage(tmp_path / "store"), database="shop",
                         identity=parse_identity(age_keys[0], source="test"), data_dir=relayed_dir,
                         restore_command=fetch_command(config, "shop"), to_time=target, server_environ=basic_env,
                         relay=True)
    assert f"restore_command failed: error[DBP007]: WAL {target_segment}" in relayed.value.one_line()
    assert not relayed_dir.exists()
