#!/usr/bin/env python3
"""Chaos test of a three-node Elastic Stream cluster on loopback (Python 3 standard library only).

Starts three `elastic-stream` nodes (placement driver member + range server each) with configurations generated from
Config/cluster-{1,2,3}.toml, creates streams, runs one `esctl append` writer loop and one `esctl tail` per stream,
injects process faults (SIGKILL, SIGSTOP, leader kills, double kills) chosen by a seeded RNG, then heals the cluster
and checks with `esctl read` that every acknowledged record is there exactly once, at its acknowledged offset, byte
for byte, and that nothing else is. Everything it does is logged under the work directory. See README.md.

Run it through Tests/Chaos/run.sh (which also cleans up if this process is killed).
"""
import argparse
import datetime
import fcntl
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NODES = (1, 2, 3)
FAULT_KINDS = ("kill_random", "kill_leader", "stop_cont", "kill_two")


# ----------------------------------------------------------------------------------------------------------------
# Logging and process bookkeeping


def stamp(t=None):
    t = time.time() if t is None else t
    return datetime.datetime.fromtimestamp(t).strftime("%H:%M:%S.%f")[:-3]


class EventLog:
    """events.log: every harness event with a wall-clock timestamp (also echoed to stdout unless quiet)."""

    def __init__(self, path, echo=True):
        self.file = open(path, "a", buffering=1)
        self.lock = threading.Lock()
        self.echo = echo

    def __call__(self, message, echo=None):
        line = f"{stamp()} {message}"
        with self.lock:
            self.file.write(line + "\n")
            self.file.flush()
            if self.echo if echo is None else echo:
                print(line, flush=True)


class JsonLog:
    """An append-only JSON-lines file, flushed and fsynced after every entry."""

    def __init__(self, path):
        self.file = open(path, "a")
        self.lock = threading.Lock()

    def write(self, entry):
        with self.lock:
            self.file.write(json.dumps(entry, sort_keys=True) + "\n")
            self.file.flush()
            os.fsync(self.file.fileno())


class Processes:
    """Every child process this run started, so that all of them can be killed on exit. Their pids also go to
    <workdir>/pids, which run.sh uses to kill leftovers if this process dies without cleaning up."""

    def __init__(self, pid_file):
        self.lock = threading.Lock()
        self.live = {}
        self.pid_file = open(pid_file, "a", buffering=1)
        self.closing = False

    def popen(self, argv, **kwargs):
        with self.lock:
            if self.closing:
                raise Interrupted("shutting down")
            proc = subprocess.Popen(argv, start_new_session=True, **kwargs)
            self.live[proc.pid] = proc
            self.pid_file.write(f"{proc.pid} {os.path.basename(argv[0])}\n")
            return proc

    def forget(self, proc):
        with self.lock:
            self.live.pop(proc.pid, None)

    def kill_all(self):
        with self.lock:
            self.closing = True
            procs = list(self.live.values())
        for proc in procs:
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGKILL)   # works on SIGSTOPped processes too
                except ProcessLookupError:
                    pass
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


class Interrupted(Exception):
    pass


# ----------------------------------------------------------------------------------------------------------------
# Configuration and ports


def port_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def ports_for(block):
    """Block k: placement driver 23810 + 10k + n, range server 20000 + 1000k + 100n (shard i on +i)."""
    return ({n: 23810 + 10 * block + n for n in NODES}, {n: 20000 + 1000 * block + 100 * n for n in NODES})


def pick_port_block(requested):
    """The first block whose ports are free, locked (flock) for this run so concurrent runs pick different ones."""
    candidates = [requested] if requested is not None else range(0, 40)
    for block in candidates:
        lock = open(f"/tmp/es-chaos-port-block-{block}.lock", "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            continue
        pd, rs = ports_for(block)
        wanted = list(pd.values()) + [p + 5 for p in pd.values()] + [p + i for p in rs.values() for i in range(4)]
        if all(port_free(p) for p in wanted):
            return block, pd, rs, lock
        lock.close()
    raise SystemExit(f"chaos: no free port block (tried {list(candidates)})")


def generate_config(template_path, n, pd_ports, rs_ports, workdir):
    """Config/cluster-n.toml with the ports and data directories moved; [reactor] kept as it is."""
    # Peer (Raft) ports 5 above the client ports, inside the block.
    members = ", ".join(f'"{m}=127.0.0.1:{pd_ports[m]}:{pd_ports[m] + 5}"' for m in NODES)
    section = None
    done = set()
    out = [f"# Generated by Tests/Chaos/chaos.py from {os.path.relpath(template_path, ROOT)}"]
    for line in open(template_path).read().splitlines():
        stripped = line.strip()
        m = re.match(r"^\[(\w+)\]$", stripped)
        if m:
            section = m.group(1)
        key = stripped.split("=", 1)[0].strip() if "=" in stripped and not stripped.startswith("#") else None
        if section == "pd" and key == "members":
            line = f"members = [{members}]"
        elif section == "pd" and key == "data_dir":
            line = f'data_dir = "{workdir}/node-{n}/pd"'
        elif section == "pd" and key == "member_id":
            line = f"member_id = {n}"
        elif section == "server" and key == "port":
            line = f"port = {rs_ports[n]}"
        elif section == "server" and key == "data_dir":
            line = f'data_dir = "{workdir}/node-{n}/server"'
        else:
            out.append(line)
            continue
        done.add((section, key))
        out.append(line)
    needed = {("pd", "members"), ("pd", "data_dir"), ("pd", "member_id"), ("server", "port"), ("server", "data_dir")}
    if done != needed:
        raise SystemExit(f"chaos: {template_path} lacks {sorted(needed - done)}")
    path = os.path.join(workdir, f"node-{n}.toml")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    return path


# ----------------------------------------------------------------------------------------------------------------
# Nodes and esctl


class Node:
    def __init__(self, n, binary, config, workdir, procs, log):
        self.n, self.binary, self.config, self.procs, self.log = n, binary, config, procs, log
        self.dir = os.path.join(workdir, f"node-{n}")
        os.makedirs(self.dir, exist_ok=True)
        self.stdout_path = os.path.join(self.dir, "stdout.log")
        self.stderr_path = os.path.join(self.dir, "stderr.log")
        self.proc = None
        self.stopped = False
        self.incarnation = 0
        self.exits = []          # (time, returncode) of every incarnation that ended

    def ready_count(self):
        try:
            with open(self.stdout_path, "rb") as f:
                return sum(1 for line in f if line.startswith(b"READY "))
        except FileNotFoundError:
            return 0

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self, wait=60.0):
        """Starts an incarnation and waits for its READY line. Returns True when ready."""
        before = self.ready_count()
        self.incarnation += 1
        marker = f"--- chaos: incarnation {self.incarnation} started {stamp()} ---\n"
        for path in (self.stdout_path, self.stderr_path):
            with open(path, "a") as f:
                f.write(marker)
        out = open(self.stdout_path, "ab")
        err = open(self.stderr_path, "ab")
        self.proc = self.procs.popen([self.binary, "--config", self.config], stdout=out, stderr=err,
                                     stdin=subprocess.DEVNULL, cwd=self.dir)
        out.close()
        err.close()
        self.stopped = False
        self.log(f"node {self.n}: started (pid {self.proc.pid}, incarnation {self.incarnation})")
        deadline = time.time() + wait
        while time.time() < deadline:
            if self.ready_count() > before:
                self.log(f"node {self.n}: READY")
                return True
            rc = self.proc.poll()
            if rc is not None:
                self.exits.append((time.time(), rc))
                self.procs.forget(self.proc)
                self.log(f"node {self.n}: EXITED with status {rc} before READY (see {self.stderr_path})")
                return False
            time.sleep(0.1)
        self.log(f"node {self.n}: no READY within {wait:.0f} s")
        return False

    def signal(self, sig):
        if self.proc is None or self.proc.poll() is not None:
            return False
        os.kill(self.proc.pid, sig)
        if sig == signal.SIGSTOP:
            self.stopped = True
        elif sig == signal.SIGCONT:
            self.stopped = False
        return True

    def kill(self):
        """SIGKILL and reap. Returns the exit status (None if it was not running)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        rc = self.proc.wait()
        self.procs.forget(self.proc)
        self.exits.append((time.time(), rc))
        self.stopped = False
        return rc

    def check_unexpected_exit(self):
        """A node that died without being killed by us (crash): note it. Returns the status or None."""
        if self.proc is not None and self.proc.poll() is not None and self.proc.pid in self.procs.live:
            rc = self.proc.returncode
            self.procs.forget(self.proc)
            self.exits.append((time.time(), rc))
            self.log(f"node {self.n}: DIED on its own with status {rc} (see {self.stderr_path})")
            return rc
        return None


class Esctl:
    def __init__(self, binary, pd, procs, timeout):
        self.binary, self.pd, self.procs, self.timeout = binary, pd, procs, timeout

    def argv(self, args, json_out=False, timeout=None):
        argv = [self.binary] + list(args) + ["--pd", self.pd, "--timeout", str(timeout or self.timeout)]
        return argv + (["--json"] if json_out else [])

    def run(self, args, json_out=False, input_bytes=b"", timeout=None, wall=None):
        """Runs esctl; returns (returncode, stdout bytes, stderr text). A run past `wall` seconds is SIGKILLed and
        reported as returncode None."""
        argv = self.argv(args, json_out, timeout)
        wall = wall or (timeout or self.timeout) * 3 + 30
        proc = self.procs.popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(input_bytes, timeout=wall)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            rc = None
            err = err + f"\n[chaos: esctl killed after {wall:.0f} s]".encode()
        finally:
            self.procs.forget(proc)
        return rc, out, err.decode("utf-8", "replace").strip()

    def status(self, timeout=3.0):
        rc, out, err = self.run(["cluster", "status"], json_out=True, timeout=timeout, wall=timeout * 4 + 10)
        if rc != 0:
            return None, err
        try:
            return json.loads(out.decode().strip().splitlines()[-1]), ""
        except (ValueError, IndexError) as e:
            return None, f"unparsable status: {e}: {out[:200]!r}"


def online_servers(status):
    return [s for s in status.get("range_servers", []) if s.get("state") == "serverOnline"]


# ----------------------------------------------------------------------------------------------------------------
# Writers


class Writer(threading.Thread):
    """One loop per stream: each iteration pipes 3..10 unique lines into `esctl append STREAM --batch N --json`."""

    def __init__(self, index, stream, esctl, rng, appends_log, log, stop, pause_max, append_wall):
        super().__init__(name=f"writer-{stream}", daemon=True)
        self.index, self.stream, self.esctl, self.rng = index, stream, esctl, rng
        self.appends_log, self.log, self.stop = appends_log, log, stop
        self.pause_max, self.append_wall = pause_max, append_wall
        self.attempts = []       # every attempt, in order (dicts, also in appends.jsonl)
        self.lock = threading.Lock()
        self.crashed = None

    def run(self):
        try:
            self.loop()
        except Interrupted:
            pass
        except Exception as e:   # a harness bug must not go unnoticed
            self.crashed = repr(e)
            self.log(f"writer {self.stream}: CRASHED: {e!r}")

    def loop(self):
        iteration = 0
        while not self.stop.is_set():
            iteration += 1
            count = self.rng.randint(3, 10)
            batch = self.rng.randint(1, count)
            payloads = [f"s{self.stream}-w{iteration}-r{k}-{self.rng.getrandbits(64):016x}" for k in range(count)]
            attempt = {"stream": self.stream, "iter": iteration, "batch": batch, "payloads": payloads,
                       "t_start": time.time(), "status": "started"}
            self.appends_log.write({"event": "start", "stream": self.stream, "iter": iteration, "batch": batch,
                                    "payloads": payloads, "t": attempt["t_start"]})
            rc, out, err = self.esctl.run(["append", str(self.stream), "--batch", str(batch)], json_out=True,
                                          input_bytes=("\n".join(payloads) + "\n").encode(), wall=self.append_wall)
            attempt["t_end"] = time.time()
            attempt["rc"] = rc
            result = None
            if rc == 0:
                try:
                    result = json.loads(out.decode().strip().splitlines()[-1])
                except (ValueError, IndexError):
                    result = None
            if rc == 0 and result is not None and result.get("records") == count \
                    and result.get("next_offset", -1) - result.get("first_offset", 0) == count:
                attempt["status"] = "ok"
                attempt["first_offset"] = result["first_offset"]
                attempt["next_offset"] = result["next_offset"]
            elif rc == 0:
                # Exit 0 without the offsets we expect: not usable as an acknowledgement, flagged in the summary.
                attempt["status"] = "anomalous"
                attempt["stdout"] = out.decode("utf-8", "replace")
            else:
                attempt["status"] = "failed"
            attempt["stderr"] = err[-2000:]
            entry = {"event": attempt["status"], "stream": self.stream, "iter": iteration, "rc": rc,
                     "t": attempt["t_end"], "seconds": round(attempt["t_end"] - attempt["t_start"], 3)}
            for key in ("first_offset", "next_offset", "stdout", "stderr"):
                if attempt.get(key) not in (None, ""):
                    entry[key] = attempt[key]
            self.appends_log.write(entry)
            with self.lock:
                self.attempts.append(attempt)
            if attempt["status"] != "ok":
                self.log(f"writer {self.stream}: append #{iteration} {attempt['status']} (rc {rc}, "
                         f"{attempt['t_end'] - attempt['t_start']:.1f} s): {first_line(err)}")
            self.stop.wait(self.rng.uniform(0, self.pause_max))


def first_line(text):
    lines = [l for l in text.splitlines() if l.strip()]
    return (lines[-1] if lines else "")[:300]


# ----------------------------------------------------------------------------------------------------------------
# Tails


class Tail:
    """`esctl tail STREAM --from 0` for the whole run. If it exits (it gives up when the placement driver stays
    unreachable past --timeout), it is restarted from the offset after the last one it printed, and that is noted."""

    def __init__(self, stream, esctl, procs, workdir, log):
        self.stream, self.esctl, self.procs, self.log = stream, esctl, procs, log
        self.raw = open(os.path.join(workdir, f"tail-{stream}.out"), "ab")
        self.stamped = open(os.path.join(workdir, f"tail-{stream}.stamped"), "a", buffering=1)
        self.err_path = os.path.join(workdir, f"tail-{stream}.stderr")
        self.records = []        # (arrival time, offset or None, value bytes, raw line)
        self.lock = threading.Lock()
        self.proc = None
        self.reader = None
        self.restarts = []       # (time, exit status, from offset)
        self.partial_lines = 0
        self.stopping = False

    def next_offset(self):
        with self.lock:
            for rec in reversed(self.records):
                if rec[1] is not None:
                    return rec[1] + 1
        return 0

    def start(self):
        start = self.next_offset()
        err = open(self.err_path, "ab")
        err.write(f"--- chaos: tail started {stamp()} from {start} ---\n".encode())
        err.flush()
        self.proc = self.procs.popen(self.esctl.argv(["tail", str(self.stream), "--from", str(start)]),
                                     stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
        err.close()
        self.reader = threading.Thread(target=self.read, args=(self.proc,), name=f"tail-{self.stream}", daemon=True)
        self.reader.start()
        return start

    def read(self, proc):
        for line in iter(proc.stdout.readline, b""):
            now = time.time()
            self.raw.write(line)
            self.raw.flush()
            if not line.endswith(b"\n"):
                self.partial_lines += 1      # cut off when the tail was killed
                continue
            body = line[:-1]
            offset, value = None, body
            if b"\t" in body:
                head, value = body.split(b"\t", 1)
                if head.isdigit():
                    offset = int(head)
            with self.lock:
                self.records.append((now, offset, value, body))
            self.stamped.write(f"{now:.3f}\t{body.decode('utf-8', 'replace')}\n")

    def check(self):
        """Restarts the tail if it exited (unless we are stopping it)."""
        if self.proc is None or self.stopping or self.proc.poll() is None:
            return
        self.reader.join(timeout=5)
        rc = self.proc.returncode
        self.procs.forget(self.proc)
        start = self.start()
        self.restarts.append((time.time(), rc, start))
        self.log(f"tail {self.stream}: exited with status {rc}; restarted from offset {start}")

    def stop(self):
        self.stopping = True
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.reader is not None:
            self.reader.join(timeout=5)
        if self.proc is not None:
            self.procs.forget(self.proc)


# ----------------------------------------------------------------------------------------------------------------
# Verification


def parse_read(data):
    """`esctl read` text output: one `offset<TAB>value` line per record. Returns (records, malformed lines)."""
    records, malformed = [], []
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for line in lines:
        head, sep, value = line.partition(b"\t")
        if not sep or not head.isdigit():
            malformed.append(line)
            continue
        records.append((int(head), value))
    return records, malformed


def verify_stream(attempts, records):
    """Checks one stream's records (offset, value bytes) against every append attempt. Returns a dict of findings."""
    ok = [a for a in attempts if a["status"] == "ok"]
    not_ok = [a for a in attempts if a["status"] != "ok"]
    written = {}
    for a in attempts:
        for k, p in enumerate(a["payloads"]):
            written[p.encode()] = (a, k)
    at_offset = {}
    by_value = {}
    offset_errors = []
    for i, (offset, value) in enumerate(records):
        if offset != i and len(offset_errors) < 20:
            offset_errors.append(f"record #{i} has offset {offset} (expected {i})")
        if offset in at_offset and len(offset_errors) < 20:
            offset_errors.append(f"offset {offset} appears twice")
        at_offset.setdefault(offset, value)
        by_value.setdefault(value, []).append(offset)
    f = {"records": len(records), "offset_errors": offset_errors, "lost": [], "duplicated": [], "misplaced": [],
         "altered": [], "unknown": [], "failed_present": 0, "failed_duplicated": [], "ack_overlaps": [],
         "acked_records": sum(len(a["payloads"]) for a in ok),
         "failed_records": sum(len(a["payloads"]) for a in not_ok)}
    for value, offsets in by_value.items():
        if value not in written:
            f["unknown"].append((offsets[0], value))
    for a in ok:
        for k, p in enumerate(a["payloads"]):
            expected = a["first_offset"] + k
            found = by_value.get(p.encode(), [])
            if not found:
                f["lost"].append((expected, p))
            elif len(found) > 1:
                f["duplicated"].append((found, p))
            elif found[0] != expected:
                f["misplaced"].append((expected, found[0], p))
            there = at_offset.get(expected)
            if there is not None and there != p.encode():
                f["altered"].append((expected, p, there))
    for a in not_ok:
        for p in a["payloads"]:
            found = by_value.get(p.encode(), [])
            if found:
                f["failed_present"] += 1
            if len(found) > 1:
                f["failed_duplicated"].append((found, p))
    spans = sorted((a["first_offset"], a["next_offset"], a["iter"]) for a in ok)
    for (s1, e1, i1), (s2, e2, i2) in zip(spans, spans[1:]):
        if s2 < e1:
            f["ack_overlaps"].append(f"appends #{i1} [{s1},{e1}) and #{i2} [{s2},{e2}) overlap")
    f["bad"] = bool(f["offset_errors"] or f["lost"] or f["duplicated"] or f["misplaced"] or f["altered"]
                    or f["unknown"] or f["failed_duplicated"] or f["ack_overlaps"])
    return f


def verify_tail(tail, attempts, final_records, t_writers_stopped):
    """What the tail printed: count, order, exactly once, agreement with the final read, catch-up and lag."""
    with tail.lock:
        recs = list(tail.records)
    final = dict(final_records)
    written = {p.encode() for a in attempts for p in a["payloads"]}
    r = {"records": len(recs), "restarts": len(tail.restarts), "partial_lines": tail.partial_lines,
         "out_of_order": 0, "duplicates": 0, "gaps": 0, "unknown": 0, "differs_from_read": 0, "malformed": 0}
    expected = 0
    seen_offsets, seen_values = set(), set()
    for _, offset, value, _ in recs:
        if offset is None:
            r["malformed"] += 1
            continue
        if offset in seen_offsets or value in seen_values:
            r["duplicates"] += 1
        elif offset < expected:
            r["out_of_order"] += 1
        elif offset > expected:
            r["gaps"] += 1
        seen_offsets.add(offset)
        seen_values.add(value)
        expected = max(expected, offset + 1)
        if value not in written:
            r["unknown"] += 1
        if offset in final and final[offset] != value:
            r["differs_from_read"] += 1
    r["last_offset"] = max(seen_offsets) if seen_offsets else -1
    r["final_end"] = len(final_records)
    r["caught_up"] = r["last_offset"] + 1 >= len(final_records)
    # Lag at the moment the writers were told to stop: acknowledged end vs what the tail had printed by then.
    acked_end = max((a["next_offset"] for a in attempts if a["status"] == "ok" and a["t_end"] <= t_writers_stopped),
                    default=0)
    printed = max((o for t, o, _, _ in recs if o is not None and t <= t_writers_stopped), default=-1) + 1
    r["behind_at_stop"] = max(0, acked_end - printed)
    # Per acknowledged record: tail arrival time minus the time its esctl append exited.
    arrival = {}
    for t, offset, value, _ in recs:
        if offset is not None and offset not in arrival:
            arrival[offset] = (t, value)
    lags = []
    for a in attempts:
        if a["status"] != "ok":
            continue
        for k, p in enumerate(a["payloads"]):
            got = arrival.get(a["first_offset"] + k)
            if got is not None and got[1] == p.encode():
                lags.append(got[0] - a["t_end"])
    lags.sort()
    r["lag_samples"] = len(lags)
    if lags:
        r["lag_p50"] = lags[len(lags) // 2]
        r["lag_p99"] = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
        r["lag_max"] = lags[-1]
    r["bad"] = bool(r["out_of_order"] or r["duplicates"] or r["gaps"] or r["unknown"] or r["differs_from_read"]
                    or r["malformed"])
    return r


def stall_gaps(attempts, t_begin, t_end):
    """Gaps between consecutive successful append completions of one stream, from t_begin to t_end."""
    times = [t_begin] + sorted(a["t_end"] for a in attempts if a["status"] == "ok" and t_begin <= a["t_end"] <= t_end)
    times.append(t_end)
    return [(a, b) for a, b in zip(times, times[1:])]


# ----------------------------------------------------------------------------------------------------------------
# The run


class Chaos:
    def __init__(self, args):
        self.args = args
        self.workdir = os.path.abspath(args.workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.bin = os.path.abspath(args.bin)
        self.log = EventLog(os.path.join(self.workdir, "events.log"))
        self.faults_log = JsonLog(os.path.join(self.workdir, "faults.jsonl"))
        self.appends_log = JsonLog(os.path.join(self.workdir, "appends.jsonl"))
        self.procs = Processes(os.path.join(self.workdir, "pids"))
        self.rng = random.Random(f"{args.seed}-faults")
        self.stop_writers = threading.Event()
        self.nodes = {}
        self.writers = []
        self.tails = {}
        self.faults = []
        self.restart_failures = []
        self.unexpected_exits = []
        self.harness_errors = []

    # -- helpers

    def pause(self, seconds):
        """Sleeps while keeping an eye on the tails and on nodes that die on their own."""
        deadline = time.time() + seconds
        while True:
            for tail in self.tails.values():
                tail.check()
            for node in self.nodes.values():
                rc = node.check_unexpected_exit()
                if rc is not None:
                    self.unexpected_exits.append((time.time(), node.n, rc))
            left = deadline - time.time()
            if left <= 0:
                return
            time.sleep(min(0.25, left))

    def start_node(self, node, attempts=3):
        for attempt in range(attempts):
            if node.start(wait=self.args.ready_timeout):
                return True
            if node.alive():
                node.kill()
            self.restart_failures.append((time.time(), node.n, attempt + 1))
            self.pause(2)
        return False

    def wait_healthy(self, timeout, need=3):
        """Until the placement driver has a leader and `need` range servers are online."""
        deadline = time.time() + timeout
        last = ""
        while time.time() < deadline:
            status, err = self.esctl.status()
            if status is not None:
                online = online_servers(status)
                last = f"leader {status.get('leader_id')}, {len(online)} of {len(status.get('range_servers', []))} " \
                       f"range servers online"
                if status.get("leader_id") and len(online) >= need:
                    self.log(f"cluster healthy: {last}")
                    return status
            else:
                last = err
            self.pause(1)
        self.log(f"cluster NOT healthy after {timeout:.0f} s: {last}")
        return None

    def leader(self):
        for _ in range(5):
            status, _ = self.esctl.status()
            if status is not None and status.get("leader_id") in NODES:
                return status["leader_id"]
            self.pause(0.5)
        return None

    # -- phases

    def setup(self):
        a = self.args
        self.block, self.pd_ports, self.rs_ports, self._port_lock = pick_port_block(a.port_block)
        self.pd = ",".join(f"127.0.0.1:{self.pd_ports[n]}" for n in NODES)
        self.esctl = Esctl(os.path.join(self.bin, "esctl"), self.pd, self.procs, a.esctl_timeout)
        self.log(f"chaos: work dir {self.workdir}, binaries {self.bin}, seed {a.seed}, {a.minutes} minutes, "
                 f"port block {self.block}: placement driver {self.pd}, range servers "
                 f"{','.join(str(self.rs_ports[n]) for n in NODES)}")
        for n in NODES:
            config = generate_config(os.path.join(ROOT, "Config", f"cluster-{n}.toml"), n, self.pd_ports,
                                     self.rs_ports, self.workdir)
            self.nodes[n] = Node(n, os.path.join(self.bin, "elastic-stream"), config, self.workdir, self.procs,
                                 self.log)
        for node in self.nodes.values():
            if not self.start_node(node):
                raise SystemExit(f"chaos: node {node.n} did not start (see {node.stderr_path})")
        if self.wait_healthy(120) is None:
            raise SystemExit("chaos: the cluster did not become healthy")
        self.streams = []
        for i in range(a.streams):
            deadline = time.time() + 60
            while True:
                rc, out, err = self.esctl.run(["stream", "create", "--replicas", "3", "--ack", "2"])
                if rc == 0 and out.strip().isdigit():
                    self.streams.append(int(out.strip()))
                    break
                if time.time() > deadline:
                    raise SystemExit(f"chaos: stream create failed: {err}")
                self.pause(1)
        self.log(f"streams: {self.streams}")

    def start_load(self):
        for i, stream in enumerate(self.streams):
            self.tails[stream] = Tail(stream, self.esctl, self.procs, self.workdir, self.log)
            self.tails[stream].start()
        for i, stream in enumerate(self.streams):
            w = Writer(i, stream, self.esctl, random.Random(f"{self.args.seed}-writer-{i}"), self.appends_log,
                       self.log, self.stop_writers, self.args.writer_pause, self.args.append_wall)
            self.writers.append(w)
            w.start()

    def fault(self, kind):
        f = {"id": len(self.faults) + 1, "kind": kind, "t_start": time.time()}
        rng = self.rng
        if kind == "kill_random":
            n = rng.choice(NODES)
            down = rng.uniform(2, 10)
            f.update(nodes=[n], down_s=round(down, 2))
            self.log(f"FAULT #{f['id']} {kind}: SIGKILL node {n}, restart in {down:.1f} s")
            self.nodes[n].kill()
            self.pause(down)
        elif kind == "kill_leader":
            leader = self.leader()
            f["t_start"] = time.time()
            n = leader if leader is not None else rng.choice(NODES)
            down = rng.uniform(2, 10)
            f.update(nodes=[n], down_s=round(down, 2), leader_found=leader is not None)
            self.log(f"FAULT #{f['id']} {kind}: SIGKILL placement driver leader node {n}"
                     f"{'' if leader else ' (no leader found: a random node)'}, restart in {down:.1f} s")
            self.nodes[n].kill()
            self.pause(down)
        elif kind == "stop_cont":
            n = rng.choice(NODES)
            f.update(nodes=[n], down_s=5.0)
            self.log(f"FAULT #{f['id']} {kind}: SIGSTOP node {n} for 5 s")
            if not self.nodes[n].signal(signal.SIGSTOP):
                f["note"] = "node was not running"
            self.pause(5)
            self.nodes[n].signal(signal.SIGCONT)
            f["t_recovered"] = f["t_ready"] = time.time()
            self.log(f"FAULT #{f['id']}: SIGCONT node {n}")
        elif kind == "kill_two":
            pair = sorted(rng.sample(NODES, 2))
            f.update(nodes=pair, down_s=3.0)
            self.log(f"FAULT #{f['id']} {kind}: SIGKILL nodes {pair[0]} and {pair[1]}, restart in 3 s")
            for n in pair:
                self.nodes[n].kill()
            self.pause(3)
        if kind != "stop_cont":
            f["t_recovered"] = time.time()
            ready = [self.start_node(self.nodes[n]) for n in f["nodes"]]
            f["t_ready"] = time.time()
            f["restarted"] = all(ready)
            self.log(f"FAULT #{f['id']}: node(s) {f['nodes']} restarted"
                     f"{'' if all(ready) else ' — SOME DID NOT COME BACK'} "
                     f"({f['t_ready'] - f['t_start']:.1f} s after the fault)")
        self.faults.append(f)
        self.faults_log.write(dict(f, start=stamp(f["t_start"]), ready=stamp(f["t_ready"])))

    def run_faults(self):
        self.t_faults_begin = time.time()
        self.pause(self.args.warmup)
        end = self.t_faults_begin + self.args.minutes * 60
        kinds = [k for k in FAULT_KINDS if k not in self.args.skip_fault]
        while time.time() < end and kinds:
            self.fault(self.rng.choice(kinds))
            # Nodes the fault left down (a failed restart) are retried before the next fault.
            for node in self.nodes.values():
                if not node.alive():
                    self.log(f"node {node.n} is down after the fault: restarting it")
                    self.start_node(node)
            gap = self.rng.uniform(self.args.gap_min, self.args.gap_max)
            self.pause(min(gap, max(0.0, end - time.time())))
        self.t_faults_end = time.time()
        self.log(f"faults over after {self.t_faults_end - self.t_faults_begin:.0f} s: {len(self.faults)} faults")

    def heal(self):
        self.stop_writers.set()
        self.t_writers_stopped = time.time()
        self.log("stopping the writers (each finishes its current append)")
        for w in self.writers:
            while w.is_alive():
                w.join(timeout=0.5)
                self.pause(0)
        self.log("writers stopped")
        for node in self.nodes.values():
            if node.stopped:
                node.signal(signal.SIGCONT)
            if not node.alive():
                self.log(f"node {node.n} is down at the end: restarting it")
                self.start_node(node)
        return self.wait_healthy(self.args.settle_minutes * 60)

    def seal_streams(self, deadline):
        """One empty `esctl append` per stream: a new writer seals the last range (an orphan one too, if the last
        append failed), so the stream's end is settled before the check."""
        self.sealed = {}
        for stream in self.streams:
            tries = 0
            while True:
                tries += 1
                rc, out, err = self.esctl.run(["append", str(stream)], json_out=True, input_bytes=b"")
                if rc == 0:
                    self.sealed[stream] = (tries, out.decode().strip())
                    self.log(f"stream {stream}: sealed by an empty append ({tries} tries): {out.decode().strip()}")
                    break
                if time.time() > deadline:
                    self.sealed[stream] = (tries, f"FAILED: {first_line(err)}")
                    self.log(f"stream {stream}: the sealing append still fails after {tries} tries: {first_line(err)}")
                    break
                self.pause(2)

    def final_read(self, stream, attempts, deadline):
        """`esctl read STREAM --from 0`, retried until it exits 0 with nothing acknowledged missing, or the
        deadline passes. Every attempt's output is kept (read-<stream>-<n>.out)."""
        tries, result = 0, None
        while True:
            tries += 1
            rc, out, err = self.esctl.run(["read", str(stream), "--from", "0"], wall=self.args.read_wall)
            path = os.path.join(self.workdir, f"read-{stream}-{tries}.out")
            with open(path, "wb") as f:
                f.write(out)
            if err:
                with open(path + ".stderr", "w") as f:
                    f.write(err + "\n")
            if rc == 0:
                records, malformed = parse_read(out)
                findings = verify_stream(attempts, records)
                findings["malformed"] = malformed
                result = (records, findings, tries, path)
                if not findings["lost"] and not malformed:
                    break
                why = f"{len(findings['lost'])} acknowledged records missing"
            else:
                why = f"status {rc}: {first_line(err)}"
            if time.time() > deadline:
                self.log(f"stream {stream}: read attempt {tries}: {why}; giving up (deadline)")
                break
            self.log(f"stream {stream}: read attempt {tries}: {why}; retrying")
            self.pause(5)
        if result is not None:
            self.log(f"stream {stream}: read {len(result[0])} records (attempt {tries}, {result[3]})")
        return result, tries

    def ranges(self, stream):
        rc, out, err = self.esctl.run(["range", "list", str(stream)], json_out=True)
        if rc != 0:
            return None
        try:
            ranges = json.loads(out.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            return None
        with open(os.path.join(self.workdir, f"ranges-{stream}.json"), "w") as f:
            json.dump(ranges, f, indent=1)
        return ranges

    def check(self):
        a = self.args
        deadline = time.time() + a.settle_minutes * 60
        if a.final_seal:
            self.seal_streams(deadline)
        self.results = {}
        for w in self.writers:
            with w.lock:
                attempts = list(w.attempts)
            result, tries = self.final_read(w.stream, attempts, deadline)
            self.results[w.stream] = {"attempts": attempts, "read": result, "read_tries": tries}
        # Give the tails time to print the settled end, then stop them.
        tail_deadline = time.time() + a.tail_catchup
        while time.time() < tail_deadline:
            behind = [s for s, r in self.results.items() if r["read"] is not None
                      and self.tails[s].next_offset() < len(r["read"][0])]
            if not behind:
                break
            self.pause(1)
        for tail in self.tails.values():
            tail.stop()
        for s, r in self.results.items():
            r["ranges"] = self.ranges(s)
            r["tail"] = verify_tail(self.tails[s], r["attempts"], r["read"][0] if r["read"] else [],
                                    self.t_writers_stopped)

    # -- summary

    def summarize(self, healthy):
        a = self.args
        out = []
        p = out.append
        failures = []
        p("")
        p("================ chaos summary ================")
        p(f"work dir      {self.workdir}")
        p(f"binaries      {self.bin}")
        p(f"seed          {a.seed}; streams {self.streams}; placement driver {self.pd}")
        span = self.t_faults_end - self.t_faults_begin
        p(f"fault phase   {span / 60:.1f} min (asked {a.minutes}), writers ran {self.t_writers_stopped - self.t_load_begin:.0f} s")
        by_kind = {k: [f for f in self.faults if f["kind"] == k] for k in FAULT_KINDS}
        p(f"faults        {len(self.faults)}: " + ", ".join(f"{k} {len(v)}" for k, v in by_kind.items()))
        no_leader = sum(1 for f in self.faults if f["kind"] == "kill_leader" and not f.get("leader_found"))
        if no_leader:
            p(f"              ({no_leader} kill_leader found no leader and killed a random node)")
        if self.restart_failures:
            p(f"node restarts that failed (retried): {len(self.restart_failures)} "
              f"(nodes {sorted({n for _, n, _ in self.restart_failures})}; see node-N/stderr.log)")
        if self.unexpected_exits:
            p(f"nodes that died on their own: {[(stamp(t), n, rc) for t, n, rc in self.unexpected_exits]}")
            failures.append("a node died without being killed")
        if not healthy:
            p("cluster       NOT HEALTHY at the end (no leader or fewer than 3 range servers online)")
            failures.append("the cluster did not become healthy after the faults")
        if a.final_seal:
            for s, (tries, text) in self.sealed.items():
                if text.startswith("FAILED"):
                    p(f"final seal    stream {s}: {text}")
        totals = {"acked": 0, "lost": 0, "dup": 0, "unknown": 0, "altered": 0}
        worst_stall = (0, None, None, None)
        for s, r in self.results.items():
            attempts = r["attempts"]
            ok = [x for x in attempts if x["status"] == "ok"]
            failed = [x for x in attempts if x["status"] == "failed"]
            anomalous = [x for x in attempts if x["status"] == "anomalous"]
            acked = sum(len(x["payloads"]) for x in ok)
            totals["acked"] += acked
            p("")
            p(f"stream {s}")
            p(f"  appends     {len(ok)} acknowledged ({acked} records), {len(failed)} failed "
              f"({sum(len(x['payloads']) for x in failed)} records)"
              + (f", {len(anomalous)} exited 0 without usable offsets" if anomalous else ""))
            if anomalous:
                failures.append(f"stream {s}: esctl append exited 0 without the expected offsets")
            errors = {}
            for x in failed:
                key = re.sub(r"\d+", "N", first_line(x.get("stderr", "")) or f"status {x['rc']}")[:120]
                errors[key] = errors.get(key, 0) + 1
            for key, count in sorted(errors.items(), key=lambda kv: -kv[1])[:5]:
                p(f"              {count} x {key}")
            ranges = r.get("ranges")
            if ranges is None:
                p("  ranges      (esctl range list failed)")
            else:
                sealed = sum(1 for x in ranges if x.get("sealed"))
                p(f"  ranges      {len(ranges)} ({sealed} sealed, {len(ranges) - sealed} open)")
            if r["read"] is None:
                p(f"  read        NEVER SUCCEEDED ({r['read_tries']} attempts; see read-{s}-*.out.stderr)")
                failures.append(f"stream {s}: esctl read never succeeded")
                totals["lost"] += acked
            else:
                records, f, tries, path = r["read"]
                totals["lost"] += len(f["lost"])
                totals["dup"] += len(f["duplicated"]) + len(f["failed_duplicated"])
                totals["unknown"] += len(f["unknown"])
                totals["altered"] += len(f["altered"]) + len(f["misplaced"])
                p(f"  read        {len(records)} records (attempt {tries}: {os.path.basename(path)})"
                  + ("" if f["offset_errors"] else ", offsets contiguous from 0"))
                p(f"  check       lost {len(f['lost'])}, duplicated {len(f['duplicated'])}, "
                  f"misplaced {len(f['misplaced'])}, altered {len(f['altered'])}, unknown {len(f['unknown'])}; "
                  f"records of failed appends present {f['failed_present']}/{f['failed_records']} "
                  f"(twice or more: {len(f['failed_duplicated'])})")
                for label, key in (("offset error", "offset_errors"), ("lost", "lost"), ("duplicated", "duplicated"),
                                   ("misplaced", "misplaced"), ("altered", "altered"), ("unknown", "unknown"),
                                   ("failed twice", "failed_duplicated"), ("ack overlap", "ack_overlaps"),
                                   ("malformed line", "malformed")):
                    items = f.get(key) or []
                    for item in items[:5]:
                        p(f"    {label}: {item!r}"[:300])
                    if len(items) > 5:
                        p(f"    ... {len(items) - 5} more {label} (all in summary.json)")
                if f["bad"] or f["malformed"]:
                    failures.append(f"stream {s}: the records are wrong (lost/duplicated/altered/unknown/offsets)")
                elif len(f["lost"]) == 0 and tries > 1:
                    p(f"              (complete only at read attempt {tries})")
            t = r.get("tail")
            if t is not None:
                order = "in order" if not (t["out_of_order"] or t["gaps"]) else \
                    f"NOT in order ({t['out_of_order']} backwards, {t['gaps']} gaps)"
                once = "exactly once" if not t["duplicates"] else f"{t['duplicates']} DUPLICATES"
                agree = "same as the read" if not (t["differs_from_read"] or t["unknown"] or t["malformed"]) else \
                    f"{t['differs_from_read']} differ from the read, {t['unknown']} unknown, {t['malformed']} malformed"
                p(f"  tail        {t['records']} records, {order}, {once}, {agree}; "
                  + ("caught up with the end" if t["caught_up"] else
                     f"STOPPED SHORT at offset {t['last_offset']} of {t['final_end']}")
                  + f"; {t['restarts']} restarts; {t['behind_at_stop']} records behind when the writers stopped")
                if t.get("lag_samples"):
                    p(f"  tail lag    tail arrival minus the exit of the esctl append that wrote the record "
                      f"(negative: printed before esctl had sealed and exited): p50 {t['lag_p50']:.2f} s, "
                      f"p99 {t['lag_p99']:.2f} s, max {t['lag_max']:.2f} s ({t['lag_samples']} records)")
                if t["bad"]:
                    failures.append(f"stream {s}: the tail printed wrong records (order/duplicates/unknown)")
            gaps = stall_gaps(attempts, self.t_load_begin, self.t_writers_stopped)
            if gaps:
                g = max(gaps, key=lambda ab: ab[1] - ab[0])
                during = [f"#{x['id']} {x['kind']}" for x in self.faults
                          if x["t_start"] < g[1] and x["t_ready"] > g[0]]
                p(f"  longest stall {g[1] - g[0]:.1f} s between successful appends ({stamp(g[0])} -> {stamp(g[1])}"
                  + (f", overlapping {', '.join(during)}" if during else ", no fault overlapping") + ")")
                if g[1] - g[0] > worst_stall[0]:
                    worst_stall = (g[1] - g[0], s, g, during)
        p("")
        p("stall per fault kind: the longest gap between two successful appends of a stream that overlaps the fault")
        p("(from the signal until the node is READY again / SIGCONT), worst stream per fault:")
        for kind, faults in by_kind.items():
            stalls = []
            for x in faults:
                worst = 0.0
                for r in self.results.values():
                    for g0, g1 in stall_gaps(r["attempts"], self.t_load_begin, self.t_writers_stopped):
                        if g0 < x["t_ready"] and g1 > x["t_start"]:
                            worst = max(worst, g1 - g0)
                stalls.append(worst)
                x["stall_s"] = round(worst, 2)
            if stalls:
                p(f"  {kind:12s} n={len(stalls):3d}  median {statistics.median(stalls):6.1f} s  "
                  f"max {max(stalls):6.1f} s")
            else:
                p(f"  {kind:12s} n=  0")
        p("")
        p(f"totals        acknowledged records {totals['acked']}; lost {totals['lost']}; duplicated {totals['dup']}; "
          f"altered/misplaced {totals['altered']}; unknown {totals['unknown']}")
        if worst_stall[1] is not None:
            p(f"longest writer stall {worst_stall[0]:.1f} s (stream {worst_stall[1]})")
        crashed = [w.stream for w in self.writers if w.crashed]
        if crashed:
            failures.append(f"writer threads crashed (harness bug): {crashed}")
        for e in self.harness_errors:
            failures.append(e)
        p("")
        if failures:
            p("RESULT: FAIL")
            for x in failures:
                p(f"  - {x}")
        else:
            p("RESULT: PASS")
        text = "\n".join(out)
        print(text, flush=True)
        with open(os.path.join(self.workdir, "summary.txt"), "w") as f:
            f.write(text + "\n")
        self.write_json(totals, failures)
        return 1 if failures else 0

    def write_json(self, totals, failures):
        def clean(findings):
            return {k: (v if isinstance(v, (int, bool, str)) else [repr(x) for x in v]) for k, v in findings.items()}
        doc = {"seed": self.args.seed, "minutes": self.args.minutes, "streams": self.streams, "faults": self.faults,
               "totals": totals, "failures": failures, "streams_detail": {}}
        for s, r in self.results.items():
            d = {"read_tries": r["read_tries"], "tail": r.get("tail"),
                 "ranges": len(r["ranges"]) if r.get("ranges") is not None else None}
            if r["read"] is not None:
                d["findings"] = clean(r["read"][1])
            doc["streams_detail"][str(s)] = d
        with open(os.path.join(self.workdir, "summary.json"), "w") as f:
            json.dump(doc, f, indent=1, default=repr)

    def main(self):
        self.setup()
        self.t_load_begin = time.time()
        self.start_load()
        self.run_faults()
        healthy = self.heal() is not None
        self.check()
        return self.summarize(healthy)


def main():
    parser = argparse.ArgumentParser(description="Chaos test of a three-node Elastic Stream cluster.")
    parser.add_argument("--minutes", type=float, default=10.0, help="how long faults are injected (default 10)")
    parser.add_argument("--bin", default=os.path.join(ROOT, ".build-chaos", "release"),
                        help="directory with elastic-stream and esctl")
    parser.add_argument("--seed", default=str(int(time.time())), help="seed of the fault and payload RNGs")
    parser.add_argument("--workdir", required=True, help="where configs, data, logs and outputs go")
    parser.add_argument("--streams", type=int, default=2)
    parser.add_argument("--port-block", type=int, default=None,
                        help="port block k: PD 23810+10k+n, range servers 20000+1000k+100n (default: first free)")
    parser.add_argument("--esctl-timeout", type=float, default=20.0,
                        help="esctl --timeout for appends, tails and reads (seconds; default 20)")
    parser.add_argument("--append-wall", type=float, default=120.0,
                        help="an esctl append still running after this many seconds is killed and counted failed")
    parser.add_argument("--read-wall", type=float, default=180.0, help="the same for the final esctl read")
    parser.add_argument("--writer-pause", type=float, default=0.3, help="longest pause between two appends (s)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of load before the first fault")
    parser.add_argument("--gap-min", type=float, default=3.0, help="shortest pause between faults (s)")
    parser.add_argument("--gap-max", type=float, default=6.0, help="longest pause between faults (s)")
    parser.add_argument("--skip-fault", action="append", default=[], choices=FAULT_KINDS,
                        help="leave out a fault kind (repeatable)")
    parser.add_argument("--ready-timeout", type=float, default=60.0, help="wait for a node's READY line (s)")
    parser.add_argument("--settle-minutes", type=float, default=4.0,
                        help="how long the end may wait for health, and then retry the reads (default 4)")
    parser.add_argument("--tail-catchup", type=float, default=60.0,
                        help="how long the tails get to print the settled end before they are stopped (s)")
    parser.add_argument("--no-final-seal", dest="final_seal", action="store_false",
                        help="skip the empty append per stream that seals the last range before the check")
    args = parser.parse_args()
    for name in ("elastic-stream", "esctl"):
        if not os.access(os.path.join(args.bin, name), os.X_OK):
            raise SystemExit(f"chaos: {os.path.join(args.bin, name)} is missing; build it with\n  swift build -c "
                             f"release --scratch-path .build-chaos --product elastic-stream && swift build -c release "
                             f"--scratch-path .build-chaos --product esctl")

    chaos = Chaos(args)

    interrupted = []

    def on_signal(number, frame):
        # The first signal stops the run; later ones (run.sh forwards Ctrl-C as SIGTERM) are ignored.
        if not interrupted:
            interrupted.append(number)
            raise Interrupted(f"signal {number}")

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    status = 2
    try:
        status = chaos.main()
    except Interrupted as e:
        chaos.log(f"chaos: interrupted ({e}); killing everything")
        status = 130
    except SystemExit as e:
        chaos.log(str(e.code))
        status = 2
    finally:
        chaos.stop_writers.set()
        chaos.procs.kill_all()
        chaos.log(f"chaos: all processes killed; logs in {chaos.workdir}", echo=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
