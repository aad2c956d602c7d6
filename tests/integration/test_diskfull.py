"""Disk full on a real file system (issue 14 item 4).

spool_dir is a small tmpfs (mount -t tmpfs -o size=...; root only, skipped
with a message where mounting is not permitted).  Filling it must give
452/451 replies and never a 250 for a message that is then lost; the daemon
keeps running; accepting resumes when space comes back; and deleting the
queued mail gives the space back (the active segment is rolled and
unlinked), which is what a postmaster does in a disk-full emergency.
"""
import json
import os
import smtplib
import subprocess

import pytest

import mxtest
from mxtest import scaled, wait_until

FS_SIZE = 8 * 1024 * 1024
LINE = ("z" * 76 + "\r\n").encode()


def mount_tmpfs(path, size):
    os.makedirs(path, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("disk-full test needs root to mount a tmpfs")
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%d,mode=0755" % size,
                        "tmpfs", path], capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        pytest.skip("mount -t tmpfs is not permitted here: %s" % p.stderr.strip())


def umount(path):
    subprocess.run(["umount", path], capture_output=True, timeout=30)
    if os.path.ismount(path):
        subprocess.run(["umount", "-l", path], capture_output=True, timeout=30)


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def send_one(port, i, lines):
    """One message on its own connection: (stage, code, qid or None)."""
    s = smtplib.SMTP("127.0.0.1", port, timeout=scaled(30))
    try:
        s.ehlo("client.test")
        code, _ = s.mail("sender@client.test")
        if code != 250:
            return "MAIL", code, None
        code, _ = s.rcpt("user%d@example.test" % i)
        if code != 250:
            return "RCPT", code, None
        code, reply = s.data(b"Subject: full %d\r\n\r\n" % i + LINE * lines)
        return "DATA", code, reply.decode().rsplit(" ", 1)[1] if code == 250 else None
    finally:
        try:
            s.quit()
        except (smtplib.SMTPException, OSError):
            pass


def queued(d):
    r = d.ctl("queue", "--limit", "100000", "--json", check=True, timeout=scaled(30))
    return {m["queue_id"] for m in json.loads(r.stdout)["messages"]}


def fill(path, leave):
    """A filler file that leaves about LEAVE bytes free."""
    f = os.path.join(path, "filler")
    want = max(0, free_bytes(path) - leave)
    with open(f, "ab") as out:
        chunk = b"\0" * 65536
        while want > 0:
            try:
                out.write(chunk[:min(want, len(chunk))])
                out.flush()
            except OSError:
                break
            want -= min(want, len(chunk))
    return f


def test_disk_full_tmpfs(daemon_factory, tmp_path):
    """A full spool file system: 4xx, never 250-and-lost, still running,
    resumes when space returns, and deleting queued mail frees space."""
    mnt = mxtest.short_dir(tmp_path, "fs")
    mount_tmpfs(mnt, FS_SIZE)
    d = None
    try:
        spool = os.path.join(mnt, "spool")
        d = daemon_factory(server={"spool_dir": spool, "disk_reserve": "2M"})
        acked, refused = [], []
        # 1. Below the reserve: 452 at MAIL or RCPT.
        for i in range(200):
            stage, code, qid = send_one(d.smtp_port, i, 1300)   # ~100 KiB
            if code == 250:
                acked.append(qid)
                continue
            refused.append((stage, code))
            if stage in ("MAIL", "RCPT"):
                break
        assert refused, "never refused on a full file system"
        assert all(c in (451, 452) for _, c in refused), refused
        assert len(acked) >= 20, "too few accepted before the reserve: %d" % len(acked)
        assert d.running
        assert set(acked) <= queued(d)

        # 2. Truly full, with no reserve (the admin set it to 0; a filler
        # takes the room): MAIL and RCPT pass, the message itself cannot be
        # written (spill or journal: ENOSPC), so the refusal comes at the end
        # of data, 451 or 452.
        d.configure(server={"disk_reserve": "0"})
        mark = d.mark()
        d.reload()
        d.wait_log("reload", after=mark, timeout=scaled(10))
        filler = fill(mnt, 4096)
        late = []
        for i in range(5):
            stage, code, qid = send_one(d.smtp_port, 2000 + i, 1300)
            assert code in (250, 451, 452), (stage, code)
            if code == 250:
                acked.append(qid)
            else:
                late.append((stage, code))
        assert ("DATA", 451) in late or ("DATA", 452) in late, late
        # Small messages fit the last pages until a journal write fails
        # (451) or admission sees the disk full (452).
        for i in range(40):
            stage, code, qid = send_one(d.smtp_port, 2100 + i, 25)
            assert code in (250, 451, 452), (stage, code)
            if code == 250:
                acked.append(qid)
        assert d.running
        assert d.status() is not None
        assert set(acked) <= queued(d)

        # 3. Space comes back: accepting resumes.
        os.unlink(filler)
        got = []

        def accepted():
            stage, code, qid = send_one(d.smtp_port, 3000 + len(got), 10)
            if code == 250:
                got.append(qid)
            return code == 250
        wait_until(accepted, scaled(15), interval=0.5, what="accepting again")
        acked += got

        # Nothing acknowledged was lost, across a restart too.
        assert d.stop() == 0
        d.start()
        assert set(acked) <= queued(d)

        # 4. With the disk full again (something else filled it), deleting
        # the queued mail still works (the DELETE records fit in the room
        # the journal's ballast kept) and gives the space back.
        assert os.path.exists(os.path.join(spool, "ballast"))
        filler = fill(mnt, 0)
        before = free_bytes(mnt)
        r = d.ctl("delete", "--tenant", "demo", check=True, timeout=scaled(60))
        assert "deleted" in r.stdout, r.stdout
        wait_until(lambda: free_bytes(mnt) > before + FS_SIZE // 2, scaled(20),
                   interval=0.2, what="space back after delete (free %d, was %d)"
                   % (free_bytes(mnt), before))
        assert queued(d) == set()
        os.unlink(filler)
        # The daemon sees the space within its one-second refresh.
        wait_until(lambda: send_one(d.smtp_port, 4000, 1300)[1] == 250,
                   scaled(10), interval=0.5, what="accepting after the delete")
        assert d.stop() == 0
    finally:
        if d is not None and d.running:
            d.stop()
        umount(mnt)
