"""Rebuild the spool states a power cut could leave, from the log of
tests/powercut.so (its format is described at the top of tests/powercut.c).

The model, per inode:
  - a file's bytes are durable up to its last fsync/fdatasync: only the
    writes and truncations logged before that call began count;
  - a directory's entries (create, mkdir, unlink, rename, link) are durable
    only once an fsync of that directory began after them;
  - everything else may be lost, and the last write not covered by a sync
    may have reached the disk torn.

State(k, variant) is the disk after a cut just after log line k:
  "synced"  every file holds exactly its durable bytes;
  "torn"    every file holds its durable bytes plus its later writes, the
            last of them cut short (what a disk that wrote some unsynced
            data before dying leaves).
Directories are always exactly their durable entries in both variants, so
a file whose entry was never made durable is gone, and a directory whose
entry was not is gone with everything in it.

Nothing here knows about mxspool: the tree is the directory given as
POWERCUT_ROOT, its parent is taken as existing and durable.
"""
import os
import random

O_CREAT = 0o100
O_TRUNC = 0o1000
O_DIRECTORY = 0o200000


class Inode:
    def __init__(self, kind, durable=True):
        self.kind = kind                       # "f" or "d"
        self.cur = bytearray() if kind == "f" else {}
        self.dur = bytearray() if kind == "f" else {}
        self.pending = []                      # (seq, op) not yet durable
        self.synced_once = durable

    def apply(self, seq, op):
        _apply(self.kind, self.cur, op)
        self.pending.append((seq, op))

    def sync(self, start):
        n = 0
        while n < len(self.pending) and self.pending[n][0] <= start:
            _apply(self.kind, self.dur, self.pending[n][1])
            n += 1
        del self.pending[:n]


def _apply(kind, state, op):
    if kind == "f":
        if op[0] == "w":
            off, data = op[1], op[2]
            if len(state) < off:
                state.extend(b"\0" * (off - len(state)))
            state[off:off + len(data)] = data
        elif op[0] == "t":
            del state[op[1]:]
            if len(state) < op[1]:
                state.extend(b"\0" * (op[1] - len(state)))
    else:
        if op[0] == "add":
            state[op[1]] = op[2]
        elif op[0] == "del":
            state.pop(op[1], None)


class Log:
    """The parsed log: LINES[i] = (seq, ns, op, args)."""

    def __init__(self, log_path, data_path, root):
        self.root = os.path.normpath(root)
        self.parent = os.path.dirname(self.root)
        with open(data_path, "rb") as f:
            self.data = f.read()
        self.lines = []
        with open(log_path, "r", errors="replace") as f:
            for raw in f:
                parts = raw.rstrip("\n").split(" ")
                if len(parts) < 3 or not parts[0].isdigit():
                    continue       # a line cut by the end of the run
                self.lines.append((int(parts[0]), int(parts[1]), parts[2], parts[3:]))

    def without_dir_syncs(self):
        """A copy of this log in which no directory was ever fsync'd: what
        the spool would have done without its directory fsyncs (the
        simulator's own check that it can see a loss)."""
        other = Log.__new__(Log)
        other.root, other.parent, other.data = self.root, self.parent, self.data
        dirs, other.lines = set(), []
        for line in self.lines:
            _, _, op, a = line
            if op == "O" and int(a[1], 8) & O_DIRECTORY:
                dirs.add(int(a[0]))
            elif op == "O":
                dirs.discard(int(a[0]))
            if op == "S" and int(a[0]) in dirs:
                continue
            other.lines.append(line)
        return other

    def interesting(self):
        """Indices K (cut after line K, 0 = before anything) worth trying:
        around every sync and every change of a name."""
        ks = {0, len(self.lines)}
        for i, (_, _, op, _) in enumerate(self.lines):
            if op == "S":
                ks.add(i)          # just before this sync returned
                ks.add(i + 1)      # just after
            elif op in ("M", "D", "U", "R", "L"):
                ks.add(i + 1)
        return sorted(ks)

    def ns_at(self, k):
        """Time of the cut after line K: replies received before it were
        sent after everything they depend on was logged."""
        return self.lines[k - 1][1] if k > 0 else 0


class Replayer:
    """Walks the log forward; state() materialises the disk at the current
    position."""

    def __init__(self, log):
        self.log = log
        self.pos = 0
        self.top = Inode("d")                  # the root's parent, durable
        self.fds = {}

    def _lookup(self, path, create_dirs=False):
        """The directory inode holding PATH (current view) and the name."""
        path = os.path.normpath(path)
        if path == self.log.parent:
            return None, None
        rel = os.path.relpath(path, self.log.parent)
        parts = rel.split("/")
        d = self.top
        for name in parts[:-1]:
            nxt = d.cur.get(name)
            if nxt is None:
                nxt = Inode("d")
                d.cur[name] = nxt
                d.dur[name] = nxt       # existed before the log started
            d = nxt
        return d, parts[-1]

    def _inode(self, path):
        if os.path.normpath(path) == self.log.parent:
            return self.top
        d, name = self._lookup(path)
        return d.cur.get(name) if d is not None else None

    def advance(self, k):
        while self.pos < k:
            seq, _, op, a = self.log.lines[self.pos]
            self.pos += 1
            self._step(seq, op, a)

    def _step(self, seq, op, a):
        if op == "O":
            fd, flags, path = int(a[0]), int(a[1], 8), " ".join(a[2:])
            ino = self._inode(path)
            if ino is None:
                d, name = self._lookup(path)
                if d is None:
                    ino = self.top
                else:
                    ino = Inode("d" if flags & O_DIRECTORY else "f")
                    if flags & O_CREAT:
                        d.apply(seq, ("add", name, ino))
                    else:                # existed before the log started
                        d.cur[name] = ino
                        d.dur[name] = ino
            elif flags & O_TRUNC and ino.kind == "f":
                ino.apply(seq, ("t", 0))
            self.fds[fd] = ino
        elif op == "W":
            fd, off, n, doff = int(a[0]), int(a[1]), int(a[2]), int(a[3])
            ino = self.fds.get(fd)
            if ino is not None and ino.kind == "f":
                ino.apply(seq, ("w", off, bytes(self.log.data[doff:doff + n])))
        elif op == "T":
            ino = self.fds.get(int(a[0]))
            if ino is not None and ino.kind == "f":
                ino.apply(seq, ("t", int(a[1])))
        elif op == "S":
            ino = self.fds.get(int(a[0]))
            if ino is not None:
                ino.sync(int(a[1]))
        elif op == "C":
            self.fds.pop(int(a[0]), None)
        elif op == "M":
            d, name = self._lookup(a[0])
            d.apply(seq, ("add", name, Inode("d")))
        elif op in ("U", "D"):
            d, name = self._lookup(a[0])
            d.apply(seq, ("del", name))
        elif op in ("R", "L"):
            da, na = self._lookup(a[0])
            db, nb = self._lookup(a[1])
            ino = da.cur.get(na) if da is not None else None
            if ino is None:
                return
            if op == "R":
                da.apply(seq, ("del", na))
            db.apply(seq, ("add", nb, ino))

    def state(self, out, variant, rng=None):
        """Write the disk after a cut here into OUT (the root's parent):
        returns the number of files written."""
        rng = rng or random.Random(self.pos)
        os.makedirs(out, exist_ok=True)
        return self._write(self.top, out, variant, rng, set())

    def _write(self, d, path, variant, rng, seen):
        n = 0
        for name, ino in sorted(d.dur.items()):
            if id(ino) in seen:
                continue
            p = os.path.join(path, name)
            if ino.kind == "d":
                os.makedirs(p, exist_ok=True)
                seen.add(id(ino))
                n += self._write(ino, p, variant, rng, seen)
                continue
            body = bytearray(ino.dur)
            if variant == "torn" and ino.pending:
                ops = [op for _, op in ino.pending]
                last = max((i for i, op in enumerate(ops) if op[0] == "w"),
                           default=None)
                for i, op in enumerate(ops):
                    if i == last:
                        cut = rng.randrange(0, len(op[2]) + 1)
                        op = ("w", op[1], op[2][:cut])
                    _apply("f", body, op)
            with open(p, "wb") as f:
                f.write(body)
            n += 1
        return n
