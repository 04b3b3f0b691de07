"""The attacks of the second outside pass: the host's trust in what the interpreter answers.

The cell runs inside the interpreter that answers the host (the Docker runner's process, the
Jupyter kernel), so it can write any reply it likes: replies of the wrong shape, replies no parser
survives, replies far over the output cap, messages of a thousand frames, floods that cost the
host more to read than the cell to send, a forged "idle", a thread that holds the interpreter's
lock. Each must end in a bounded result that is not ``infra_error`` (the cell's own doing is never
the infrastructure's), with the host's memory and CPU unmoved.

Each runs on every backend; where a backend has no such wire (the subprocess backend answers with
its exit), the code does the nearest thing it can and says so.
"""

from __future__ import annotations

from retool.sandbox.attacks.base import Attack, Evidence, brief
from retool.sandbox.base import MAX_ERROR_CHARS, MAX_NOTE_CHARS, MAX_NOTES, ExecStatus

# Where the cell runs: ``kernel`` (Jupyter), ``runner`` and ``forge`` (Docker: a reply to the
# request being served, written on the runner's own protocol wire), or neither (subprocess).
_WHERE = (
    "import gc, json, sys, threading, time\n"
    "try:\n    kernel = get_ipython().kernel\nexcept NameError:\n    kernel = None\n"
    "runner = next((o for o in gc.get_objects() if type(o).__name__ == 'Runner'), None)\n"
    "def forge(reply):\n"
    "    f = sys._getframe()\n"
    "    while f is not None and f.f_code.co_name != 'serve':\n        f = f.f_back\n"
    "    if isinstance(reply, dict):\n"
    "        reply = json.dumps({**reply, 'id': f.f_locals['request']['id']}).encode()\n"
    "    runner.proto_out.write(reply + b'\\n'); runner.proto_out.flush()\n"
    "def sleeper():\n"  # a thread left running makes the kernel's host ask it what it stopped
    "    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
)
_REPLY = {"stdout": "", "stderr": "", "error": None, "ename": None, "truncated": False}


def _forged(runner_reply: str, kernel_side: str, other: str = "print('NOTHING TO FORGE')") -> str:
    return (_WHERE + f"if runner is not None:\n    forge({runner_reply})\n"
            f"elif kernel is not None:\n    {kernel_side}\nelse:\n    {other}\nprint('FORGED')\n")


_WRONG_TYPES = _forged(
    repr({**_REPLY, "ename": {"x": 1}}),
    "get_ipython().user_expressions = lambda expressions: []\n"
    "    import retool_boot\n"
    "    retool_boot.stop_threads = lambda: setattr(retool_boot, 'last_stop', '[1e999, 0]')\n"
    "    sleeper()",
)
_UNPARSEABLE = _forged(
    "b'[' * 100000",
    "import retool_boot\n"
    "    retool_boot.stop_threads = lambda: setattr(retool_boot, 'last_stop', '[' * 50000)\n"
    "    sleeper()",
)
_LONG_RAISE = "raise type('E' * 400_000, (Exception,), {})('v' * 400_000)"
_OVERSIZED = _forged(
    f"{{**{_REPLY!r}, 'stdout': 'A' * 5_000_000, 'stderr': 'B' * 1_000_000, 'ename': 'E' * 400_000, "
    "'error': 'E' * 400_000, 'notes': ['N' * 10_000] * 12 + ['\\ud800 \\x1b]52;c;cHduZWQ=\\x07']}",
    _LONG_RAISE, _LONG_RAISE,
)


def _judge_bounded(e: Evidence):
    """Not ``infra_error``, and every text of the result in bounds and encodable."""
    r = e.result
    slack = 1024
    texts = [r.stdout, r.stderr, r.error or "", *r.notes]
    try:
        for text in texts:
            text.encode("utf-8")
        encodable = True
    except UnicodeEncodeError:
        encodable = False
    bounded = (len(r.stdout.encode()) <= e.limits.max_output_bytes + slack
               and len(r.stderr.encode()) <= e.limits.max_output_bytes + slack
               and len(r.error or "") <= MAX_ERROR_CHARS and len(r.notes) <= MAX_NOTES
               and all(len(n) <= MAX_NOTE_CHARS for n in r.notes))
    sizes = f"stdout {len(r.stdout):,}, stderr {len(r.stderr):,}, error {len(r.error or ''):,}, notes {len(r.notes)}"
    return (r.status is not ExecStatus.INFRA_ERROR and bounded and encodable,
            f"{r.status.value}: {sizes}; encodable: {encodable}")


# Messages whose every frame passes ZeroMQ's per-frame limit, but not their sum: 16 x 200 MB on
# IOPub, the same on the shell channel (to the host's identity) and on stdin (which the host
# does not read). Zero-copy: the kernel holds one 1 MB buffer.
_MULTI_FRAME = _WHERE + (
    "blob = b'x' * 1_000_000\n"
    "if kernel is not None:\n"
    "    ident = kernel.get_parent('shell')['header']['session'].encode()\n"
    "    for i in range(16):\n"
    "        kernel.iopub_socket.send_multipart([b'flood'] + [blob] * 200, copy=False)\n"
    "        kernel.shell_socket.send_multipart([ident, b'junk'] + [blob] * 50, copy=False)\n"
    "        kernel.stdin_socket.send_multipart([ident, b'junk'] + [blob] * 50, copy=False)\n"
    "    time.sleep(2)\n"
    "elif runner is not None:\n"  # one protocol line far over what the host takes
    "    forge(b'\"' + b'x' * (24 << 20))\n"
    "else:\n"
    "    sys.stdout.write('x' * (48 << 20))\n"
    "print('SENT')\n"
)


def _judge_host_memory(e: Evidence):
    peak, kept = e.host_peak_growth_mb, e.host_rss_growth_mb
    ok = e.result.status is not ExecStatus.INFRA_ERROR and peak < 160 and kept < 64
    return (ok, f"{brief(e.result)[:60]}; host peak +{peak:.0f} MB, kept +{kept:.0f} MB")


# Between cells, a thread publishes messages that cost the kernel one HMAC each and the host a
# 900 KB JSON parse each: the next cell must still come back on time.
_SPRAY = _WHERE + (
    "import hashlib, hmac, uuid\n"
    "if kernel is not None:\n"
    "    key = kernel.session.key\n"
    "    parent = json.dumps({'msg_id': 'an-old-cell'}).encode()\n"
    "    content = json.dumps({'name': 'stdout', 'text': 'z', 'pad': [[]] * 300_000}, separators=(',', ':')).encode()\n"
    "    def spray():\n"
    "        while True:\n"
    "            try:\n"
    "                time.sleep(0.5)\n"
    "                while True:\n"
    "                    header = json.dumps({'msg_id': uuid.uuid4().hex, 'msg_type': 'stream', 'session': 's',\n"
    "                                         'username': 'u', 'date': '2030-01-01T00:00:00Z', 'version': '5.3'}).encode()\n"
    "                    sig = hmac.new(key, header + parent + b'{}' + content, hashlib.sha256).hexdigest().encode()\n"
    "                    kernel.iopub_socket.send_multipart([b'<IDS|MSG>', sig, header, parent, b'{}', content])\n"
    "                    time.sleep(0.002)\n"
    "            except BaseException:\n"
    "                continue\n"
    "    threading.Thread(target=spray, daemon=True).start()\n"
    "else:\n"
    "    def spray():\n"
    "        while True:\n"
    "            try:\n                print('z' * 100_000)\n"
    "            except BaseException:\n                continue\n"
    "    threading.Thread(target=spray, daemon=True).start()\n"
    "print('SPRAYING')\n"
)


def _judge_next_call_on_time(bound_s: float):
    def judge(e: Evidence):
        f = e.followup
        ok = f is not None and f.status is not ExecStatus.INFRA_ERROR and f.duration_s < bound_s
        return (ok, f"follow-up {brief(f)[:80]} in {f.duration_s if f else 0:.1f} s (bound {bound_s:g} s)")

    return judge


# A thread writes to the kernel's original stdout (the pipe the host's jail reads), forever.
_ORIGINAL_STDOUT = _WHERE + (
    "import os\n"
    "fd = getattr(sys.stdout, '_original_stdstream_copy', None) or 1\n"
    "def spam():\n"
    "    while True:\n"
    "        try:\n"
    "            while True:\n                os.write(fd, b'x' * 65536)\n"
    "        except BaseException:\n"
    "            continue\n"
    "threading.Thread(target=spam, daemon=True).start()\n"
    "print('SPAMMING', fd)\n"
)


_SETTLE_S = 3.0


def _judge_host_cpu(e: Evidence):
    spent = e.host_cpu_settle_s
    return (spent < 0.25 * _SETTLE_S, f"host CPU {spent:.2f} s in {_SETTLE_S:g} s with no cell running")


# The cell says it is idle, then keeps computing past its deadline.
_FORGED_IDLE = _WHERE + (
    "if kernel is not None:\n"
    "    kernel.session.send(kernel.iopub_socket, 'status', {'execution_state': 'idle'},\n"
    "                        parent=kernel.get_parent('shell'))\n"
    "t = time.time()\n"
    "while time.time() - t < 60:\n    pass\n"
)


def _judge_forged_idle(e: Evidence):
    r = e.result
    return (r.status is ExecStatus.TIMEOUT, f"{brief(r)[:80]} after {r.duration_s:.1f} s")


# A thread that, once the cell is over, holds the interpreter's lock for hours (a regular
# expression with catastrophic backtracking never releases it).
_GIL_HOLDER = (
    "import re, threading, time\n"
    "def hold():\n"
    "    while True:\n"
    "        try:\n            time.sleep(0.5); break\n"
    "        except BaseException:\n            pass\n"
    "    re.match(r'(a+)+$', 'a' * 40 + 'b')\n"
    "threading.Thread(target=hold, daemon=True).start()\n"
    "print('HOLDING SOON')\n"
)

UNTRUSTED: list[Attack] = [
    Attack("forged_reply_of_wrong_types", lambda b, l: _WRONG_TYPES, _judge_bounded, timeout=5.0),
    Attack("forged_reply_no_parser_survives", lambda b, l: _UNPARSEABLE, _judge_bounded, timeout=5.0),
    Attack("forged_reply_over_every_cap", lambda b, l: _OVERSIZED, _judge_bounded, timeout=10.0),
    Attack("messages_of_a_thousand_frames", lambda b, l: _MULTI_FRAME, _judge_host_memory, timeout=5.0),
    Attack("costly_messages_between_cells", lambda b, l: _SPRAY, _judge_next_call_on_time(20.0), timeout=3.0,
           followup="print('next')", settle_s=1.5),
    Attack("original_stdout_between_cells", lambda b, l: _ORIGINAL_STDOUT, _judge_host_cpu, timeout=3.0,
           followup="print('next')", settle_s=_SETTLE_S),
    Attack("forged_idle_then_busy", lambda b, l: _FORGED_IDLE, _judge_forged_idle, timeout=3.0),
    Attack("thread_holds_the_interpreter_lock", lambda b, l: _GIL_HOLDER, _judge_next_call_on_time(15.0),
           timeout=3.0, followup="print('innocent')", settle_s=1.5),
]
