"""Log-ingest benchmark worker: fixed-width lines stamped with the time they were written.

    flood.py [--rate LINES_PER_S | --rate 0 (flat out)] --lines N [--width BYTES]

Each line is  "<time.time():17.6f> <rank:5d> <seq:10d> xxx...\\n"  exactly --width bytes,
so a reader can compute lag (now - first 17 chars) and line counts from byte counts.
Paced runs write one chunk every TICK seconds (every line of a chunk carries the time
the chunk was written); flat out writes chunks of 1000 lines back to back.
Ends after N lines. With --ready-dir/--go-file every rank starts writing at the same
moment (the benchmark creates the go file once every rank is ready), so the offered
load is exactly W x R from that moment, whichever launcher started the ranks.
"""
import argparse
import os
import time

TICK = 0.005

parser = argparse.ArgumentParser()
parser.add_argument("--local_rank", type=int)
parser.add_argument("--rate", type=float, default=0.0)
parser.add_argument("--lines", type=int, required=True)
parser.add_argument("--width", type=int, default=100)
parser.add_argument("--fill", choices=("x", "ansi", "emoji"), default="x", help="what pads each line")
parser.add_argument("--ready-dir", help="touch READY_DIR/rank-R once started")
parser.add_argument("--go-file", help="then wait until this file exists before writing")
args = parser.parse_args()
rank = int(os.environ.get("RANK", "0"))
padlen = args.width - 17 - 1 - 5 - 1 - 10 - 1 - 1
# --fill ansi: colour codes instead of x's (JSON writes each ESC as 6 characters);
# --fill emoji: 4-byte UTF-8 characters (12 JSON characters each, a surrogate pair).
# Either makes a launcher event about 2-2.3x longer on the wire than the log bytes it carries.
if args.fill == "ansi":
    pad = ("\x1b[0m" * padlen)[:padlen]
elif args.fill == "emoji":
    pad = "\U0001F642" * (padlen // 4) + "x" * (padlen % 4)
else:
    pad = "x" * padlen
fmt = "{:17.6f} %5d {:10d} %s\n" % (rank, pad)
assert len(fmt.format(0.0, 0).encode()) == args.width
write = os.write
if args.ready_dir:
    open(os.path.join(args.ready_dir, f"rank-{rank}"), "w").close()
if args.go_file:
    while not os.path.exists(args.go_file):
        time.sleep(0.002)
sent = 0
start = time.time()
if args.rate <= 0:
    while sent < args.lines:
        n = min(1000, args.lines - sent)
        now = time.time()
        chunk = "".join([fmt.format(now, seq) for seq in range(sent, sent + n)]).encode()
        view = memoryview(chunk)
        while view:
            view = view[write(1, view):]
        sent += n
else:
    while sent < args.lines:
        now = time.time()
        due = min(args.lines, int((now - start) * args.rate) + 1)
        if due > sent:
            chunk = "".join([fmt.format(now, seq) for seq in range(sent, due)]).encode()
            view = memoryview(chunk)
            while view:
                view = view[write(1, view):]
            sent = due
        time.sleep(max(0.0, TICK - (time.time() - now)))
