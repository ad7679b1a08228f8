"""pylfm.atomic: the one atomic file writer, and the writers that use it (transcripts,
speech audio, quantized and converted GGUFs)."""

import errno
import json
import os
import stat
import sys

import numpy as np
import pytest

import os_failures
import pylfm
from pylfm.atomic import AtomicFile, check_writable_dir, commit_all, write_atomic
from pylfm.errors import SpeechError
from pylfm.speech.result import Speech


def _umask() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


# ---------------------------------------------------------------------- the writer
def test_write_atomic_keeps_mode_and_follows_symlinks(tmp_path):
    real = tmp_path / "real.srt"
    real.write_text("old")
    real.chmod(0o640)
    link = tmp_path / "link.srt"
    link.symlink_to("real.srt")
    write_atomic(link, "new")
    assert link.is_symlink() and os.readlink(link) == "real.srt"  # the link stays a link
    assert real.read_text() == "new"  # the file it points to got the text
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    dangling = tmp_path / "dangling.txt"
    dangling.symlink_to("made.txt")
    write_atomic(dangling, "x")
    assert dangling.is_symlink() and (tmp_path / "made.txt").read_text() == "x"
    assert sorted(os.listdir(tmp_path)) == ["dangling.txt", "link.srt", "made.txt", "real.srt"]


def test_write_atomic_errors_name_the_target_and_leave_nothing(tmp_path):
    (tmp_path / "a.txt").mkdir()
    with pytest.raises(IsADirectoryError) as e:
        write_atomic(tmp_path / "a.txt", "x")
    assert e.value.filename == str(tmp_path / "a.txt")
    with pytest.raises(FileNotFoundError) as e:
        write_atomic(tmp_path / "missing-dir" / "x.txt", "x")
    assert e.value.filename == str(tmp_path / "missing-dir" / "x.txt")
    (tmp_path / "file").write_text("f")
    with pytest.raises(NotADirectoryError):
        write_atomic(tmp_path / "file" / "x.txt", "x")
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "file"] and os.listdir(tmp_path / "a.txt") == []


_WRITE = """
import json, sys
from pylfm.atomic import write_atomic
try:
    write_atomic(sys.argv[1], sys.argv[2] * int(sys.argv[3]))
    print(json.dumps(None))
except OSError as e:
    print(json.dumps([type(e).__name__, e.errno, e.filename, str(e)]))
"""


def _write_in_subprocess(path, text, n=1, **kw):
    p = os_failures.run([sys.executable, "-c", _WRITE, str(path), text, str(n)], **kw)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    return json.loads(p.stdout)


def test_write_atomic_disk_full_keeps_the_old_file(tmp_path):
    """A write that fails half-way (here: past a file-size limit, EFBIG, as on a full
    disk) leaves the old file as it was and no temporary file."""
    path = tmp_path / "out.txt"
    path.write_text("old")
    err = _write_in_subprocess(path, "x", 100_000, max_file_bytes=4096)
    assert err is not None and err[0] == "OSError" and err[1] == errno.EFBIG, err
    assert err[2] == str(path) and ".tmp" not in err[3]
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]
    assert _write_in_subprocess(path, "x", 100, max_file_bytes=4096) is None  # under the limit it works
    assert path.read_text() == "x" * 100


def test_write_atomic_permission_denied(tmp_path):
    """Read-only file in a writable folder (a rename could replace it: refused), and a
    writable file in a read-only folder (no temporary file can be made)."""
    os_failures.require_permissions(tmp_path)
    ro_file = tmp_path / "ro.txt"
    ro_file.write_text("keep")
    ro_file.chmod(0o444)
    err = _write_in_subprocess(ro_file, "new", restricted=True)
    assert err is not None and err[0] == "PermissionError" and err[2] == str(ro_file), err
    assert ro_file.read_text() == "keep"

    sub = tmp_path / "ro-dir"
    sub.mkdir()
    target = sub / "t.txt"
    target.write_text("keep")
    sub.chmod(0o555)
    try:
        err = _write_in_subprocess(target, "new", restricted=True)
        assert err is not None and err[0] == "PermissionError" and err[2] == str(target), err
        assert target.read_text() == "keep" and os.listdir(sub) == ["t.txt"]
    finally:
        sub.chmod(0o755)
    assert sorted(os.listdir(tmp_path)) == ["ro-dir", "ro.txt"]


def test_write_atomic_new_file_gets_the_usual_mode_and_is_synced(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = write_atomic(tmp_path / "new.txt", "héllo")
    assert path == tmp_path / "new.txt" and path.read_bytes() == "héllo".encode()
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()
    assert synced == [False, True]  # the file's data, then the folder's entry
    assert os.listdir(tmp_path) == ["new.txt"]


def test_atomic_file_commits_on_success_and_discards_on_error(tmp_path):
    target = tmp_path / "model.gguf"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with AtomicFile(target) as f:
            with open(f.tmp, "wb") as out:  # a writer that opens the path itself (GGUFWriter, llama.cpp)
                out.write(b"half")
            raise RuntimeError("the writer failed")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["model.gguf"]
    with AtomicFile(target) as f:
        assert os.path.dirname(f.tmp) == str(tmp_path) and os.path.exists(f.tmp)
        with open(f.tmp, "wb") as out:
            out.write(b"new")
        assert target.read_bytes() == b"old"  # nothing visible before the commit
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["model.gguf"]
    with pytest.raises(ValueError, match="already committed"):
        f.commit()


def test_keyboard_interrupt_leaves_no_temporary_file(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with AtomicFile(tmp_path / "x") as f:
            f.write(b"partial")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_commit_all_is_all_or_what_was_done(tmp_path):
    """The files of one conversion move into place together after all are written; if a
    commit fails, the ones not yet committed are discarded (no temporary file stays)."""
    a, b, c = (AtomicFile(tmp_path / n) for n in ("a", "b", "c"))
    for f in (a, b, c):
        f.write(f.path.encode())
    os.unlink(b.tmp)  # b's commit will fail
    with pytest.raises(FileNotFoundError) as e:
        commit_all([a, b, c])
    assert e.value.filename == str(tmp_path / "b")
    assert sorted(os.listdir(tmp_path)) == ["a"]
    assert commit_all([f := AtomicFile(tmp_path / "d")]) == [tmp_path / "d"] and f.path.endswith("d")


def test_check_writable_dir(tmp_path):
    assert check_writable_dir(tmp_path / "new" / "nested") == tmp_path / "new" / "nested"
    assert os.listdir(tmp_path / "new" / "nested") == []  # the probe leaves nothing
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError):
        check_writable_dir(tmp_path / "file")


# ---------------------------------------------------------------------- its users
def test_speech_save_keeps_the_link_and_the_mode(tmp_path):
    speech = Speech(audio=np.zeros(2400, np.float32))
    real = tmp_path / "real.wav"
    real.write_bytes(b"old")
    real.chmod(0o640)
    link = tmp_path / "reply.wav"
    link.symlink_to("real.wav")
    assert speech.save(link) == link
    assert link.is_symlink() and real.read_bytes()[:4] == b"RIFF"
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    (tmp_path / "dir.wav").mkdir()
    with pytest.raises(SpeechError, match="cannot write"):
        speech.save(tmp_path / "dir.wav")
    assert sorted(os.listdir(tmp_path)) == ["dir.wav", "real.wav", "reply.wav"]


def test_quantize_keeps_the_mode_of_the_file_it_replaces(tiny_gguf_f32, tmp_path):
    dst = tmp_path / "q.gguf"
    dst.write_bytes(b"old")
    dst.chmod(0o640)
    pylfm.quantize(tiny_gguf_f32.model_path, dst, "Q8_0", force=True)
    assert pylfm.inspect(dst)["file_type"] == 7 and stat.S_IMODE(dst.stat().st_mode) == 0o640
    mm = tmp_path / "mm.gguf"
    pylfm.quantize(tiny_gguf_f32.mmproj_path, mm, "F16")
    assert stat.S_IMODE(mm.stat().st_mode) == 0o666 & ~_umask()
    assert sorted(os.listdir(tmp_path)) == ["mm.gguf", "q.gguf"]


def test_convert_refuses_a_read_only_output_and_writes_nothing(tiny_checkpoint, tmp_path):
    os_failures.require_permissions(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    ro = out / "m-F32.gguf"
    ro.write_bytes(b"keep")
    ro.chmod(0o444)
    code = ("import sys; from pylfm.files.convert import convert\n"
            "try:\n    convert(sys.argv[1], outdir=sys.argv[2], outtype='f32', name='m', force=True, progress=False,"
            " with_speech=False)\nexcept PermissionError as e:\n    print('refused', e.filename)")
    p = os_failures.python(code, str(tiny_checkpoint), str(out), restricted=True)
    assert p.returncode == 0 and p.stdout.split() == ["refused", str(ro)], p.stderr
    assert ro.read_bytes() == b"keep" and os.listdir(out) == ["m-F32.gguf"]
