#!/usr/bin/env python3
"""Render frames of a Mandelbrot zoom animation to PNG files (an orch example).

    python3 render.py START END OUT_DIR [--frames TOTAL] [--width W]
                      [--height H] [--max-iter N]

Renders frames START..END-1 (a half-open range) of a TOTAL-frame animation
into OUT_DIR as frame_00000.png, frame_00001.png, ...  Frame 0 shows the whole
set; every later frame zooms in by the same factor, towards "seahorse valley",
and the last frame is 200 times deeper than the first.

Each frame is first written to OUT_DIR/.frame_NNNNN.png.tmp and then renamed
into place with os.replace (atomic), and only after that does the script print
`ORCH_PROGRESS <n>` (n = frames finished so far in this run) on stdout.

Standard library only; exit status 0 on success, 2 on bad arguments (one line
`error: ...` on stderr), 1 when a file cannot be written.
"""

import argparse
import math
import os
import re
import struct
import sys
import zlib

# --- the animation ---------------------------------------------------------

START_CENTER = (-0.75, 0.0)  # frame 0: the whole set
TARGET = (-0.743643887037151, 0.131825904205330)  # seahorse valley
TOTAL_ZOOM = 200.0  # the last frame is this much deeper than frame 0
VIEW_W, VIEW_H = 3.0, 2.4  # frame 0 shows at least this much of the plane

DEFAULT_FRAMES = 48
DEFAULT_WIDTH = 160
DEFAULT_HEIGHT = 120
DEFAULT_MAX_ITER = 200  # at frame 0; grows with depth, see max_iter_for()

ESCAPE_R = 256.0  # large bailout radius: smoother colour bands
# The loop tests for escape every 4 iterations; |z| <= 256 at the start of a
# block, so it stays below 256**16 = 2**128 and cannot overflow a float.

PALETTE_SIZE = 1024
PALETTE_PERIOD = 48.0  # escape-time units per full trip round the palette


def frame_view(frame, total, width, height):
    """Centre (x, y) and size of one pixel for `frame` of `total`."""
    depth = frame / (total - 1) if total > 1 else 0.0
    zoom = TOTAL_ZOOM ** depth
    # Move the centre from the whole set to the target so that the target's
    # distance from the centre, in pixels, shrinks to 0 on the last frame.
    s = 1.0 / zoom
    s_min = 1.0 / TOTAL_ZOOM
    w = (1.0 - s) / (1.0 - s_min)
    cx = START_CENTER[0] + (TARGET[0] - START_CENTER[0]) * w
    cy = START_CENTER[1] + (TARGET[1] - START_CENTER[1]) * w
    pixel = max(VIEW_W / width, VIEW_H / height) / zoom
    return cx, cy, pixel, zoom


def max_iter_for(base, zoom):
    """Iteration limit: `base` at frame 0, growing with log(zoom) (x3.65 at 200x)."""
    return max(1, int(base * (1.0 + 0.5 * math.log(zoom))))


# --- colour ------------------------------------------------------------------

# A cyclic gradient (deep blue -> sky blue -> white -> gold -> dark purple).
STOPS = (
    (0.0, (0, 7, 100)),
    (0.16, (32, 107, 203)),
    (0.42, (237, 255, 255)),
    (0.6425, (255, 170, 0)),
    (0.8575, (40, 8, 56)),
    (1.0, (0, 7, 100)),
)


def build_palette():
    """PALETTE_SIZE entries of 3 bytes each, as a tuple of bytes objects."""
    out = []
    for k in range(PALETTE_SIZE):
        t = k / PALETTE_SIZE
        for (t0, c0), (t1, c1) in zip(STOPS, STOPS[1:]):
            if t0 <= t <= t1:
                u = (t - t0) / (t1 - t0)
                u = u * u * (3.0 - 2.0 * u)  # smoothstep: no visible kinks
                out.append(bytes(int(a + (b - a) * u + 0.5) for a, b in zip(c0, c1)))
                break
    return tuple(out)


# --- rendering -----------------------------------------------------------------


def render(frame, total, width, height, base_iter, palette):
    """Raw PNG scanlines (filter byte 0 + RGB) for one frame."""
    cx, cy, pixel, zoom = frame_view(frame, total, width, height)
    max_iter = max_iter_for(base_iter, zoom)

    black = b"\x00\x00\x00"
    pal = palette
    psize = len(pal)
    # Colour index = smooth escape time * scale, wrapped round the palette.
    scale = psize / PALETTE_PERIOD
    log = math.log
    log2 = math.log(2.0)
    radius = ESCAPE_R
    xs = [cx + (i - width / 2.0 + 0.5) * pixel for i in range(width)]
    ys = [cy + (height / 2.0 - 0.5 - j) * pixel for j in range(height)]

    def colour(x, y):
        """Colour of the point x + iy: 3 bytes; `black` (this object) inside."""
        # Main cardioid and period-2 bulb: inside, no need to iterate.
        y2 = y * y
        xq = x - 0.25
        q = xq * xq + y2
        if q * (q + xq) <= 0.25 * y2 or (x + 1.0) * (x + 1.0) + y2 <= 0.0625:
            return black
        c = complex(x, y)
        z = 0j
        n = 0
        while n < max_iter:
            z0 = z
            z = z * z + c
            z = z * z + c
            z = z * z + c
            z = z * z + c
            if abs(z) > radius:
                # Escaped in this block: redo it one step at a time.
                z = z0
                while True:
                    z = z * z + c
                    n += 1
                    if abs(z) > radius:
                        break
                break
            n += 4
        if n >= max_iter:
            return black
        # Smooth (continuous) escape time.
        nu = n + 1.0 - log(log(abs(z))) / log2
        return pal[int(nu * scale) % psize]

    # Mariani-Silver subdivision, for the inside only: when the whole border
    # of a rectangle is inside the set, so is everything in it (the set is
    # connected and has no holes), so it is filled black without iterating.
    # Escaping pixels are always computed one by one (smooth colours differ).
    grid = [None] * (width * height)

    def px(i, j):
        k = j * width + i
        v = grid[k]
        if v is None:
            v = grid[k] = colour(xs[i], ys[j])
        return v

    stack = [(0, 0, width - 1, height - 1)]
    while stack:
        x0, y0, x1, y1 = stack.pop()
        inside = True
        for i in range(x0, x1 + 1):
            if px(i, y0) is not black:
                inside = False
            if px(i, y1) is not black:
                inside = False
        for j in range(y0 + 1, y1):
            if px(x0, j) is not black:
                inside = False
            if px(x1, j) is not black:
                inside = False
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue  # no pixels strictly inside the border
        if inside:
            for j in range(y0 + 1, y1):
                base = j * width
                grid[base + x0 + 1:base + x1] = [black] * (x1 - x0 - 1)
        elif x1 - x0 <= 6 or y1 - y0 <= 6:
            for j in range(y0 + 1, y1):
                for i in range(x0 + 1, x1):
                    px(i, j)
        else:
            xm = (x0 + x1) // 2
            ym = (y0 + y1) // 2
            stack += ((x0, y0, xm, ym), (xm, y0, x1, ym), (x0, ym, xm, y1), (xm, ym, x1, y1))

    rows = []
    for j in range(height):
        rows.append(b"\x00")  # PNG filter type 0 (None)
        rows.extend(grid[j * width:(j + 1) * width])
    return b"".join(rows)


# --- PNG -------------------------------------------------------------------------


def _chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def png_bytes(width, height, raw):
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(raw, 6))
        + _chunk(b"IEND", b"")
    )


def write_atomic(out_dir, name, data):
    final = os.path.join(out_dir, name)
    tmp = os.path.join(out_dir, "." + name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# --- command line ----------------------------------------------------------------

USAGE = "render.py START END OUT_DIR [--frames TOTAL] [--width W] [--height H] [--max-iter N]"


def fail(message):
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, never a usage block
        fail(f"{message}; usage: {USAGE}")


def _int(text):
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer")
    return int(text, 10)


def parse_args(argv):
    p = _Parser(
        prog="render.py",
        usage=USAGE,
        description="Render frames START..END-1 of a Mandelbrot zoom animation as PNG files.",
        allow_abbrev=False,
    )
    p.add_argument("start", metavar="START", type=_int, help="first frame to render")
    p.add_argument("end", metavar="END", type=_int, help="frame after the last one to render")
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder for frame_NNNNN.png (created if missing)")
    p.add_argument("--frames", metavar="TOTAL", type=_int, default=DEFAULT_FRAMES,
                   help=f"frames in the whole animation (default {DEFAULT_FRAMES})")
    p.add_argument("--width", metavar="W", type=_int, default=DEFAULT_WIDTH,
                   help=f"image width, 8..4096 (default {DEFAULT_WIDTH})")
    p.add_argument("--height", metavar="H", type=_int, default=DEFAULT_HEIGHT,
                   help=f"image height, 8..4096 (default {DEFAULT_HEIGHT})")
    p.add_argument("--max-iter", metavar="N", type=_int, default=DEFAULT_MAX_ITER,
                   help=f"iteration limit at frame 0, 1..100000; it grows with the zoom "
                        f"(default {DEFAULT_MAX_ITER})")
    a = p.parse_args(argv)

    if a.frames < 1:
        fail(f"--frames must be at least 1, got {a.frames}")
    if a.start < 0:
        fail(f"START must be 0 or more, got {a.start}")
    if a.end <= a.start:
        fail(f"END must be greater than START (frames START..END-1 are rendered), "
             f"got START={a.start} END={a.end}")
    if a.end > a.frames:
        fail(f"END must be at most TOTAL={a.frames} (the animation's frame count, --frames), "
             f"got END={a.end}")
    for name, value in (("--width", a.width), ("--height", a.height)):
        if not 8 <= value <= 4096:
            fail(f"{name} must be between 8 and 4096, got {value}")
    if not 1 <= a.max_iter <= 100000:
        fail(f"--max-iter must be between 1 and 100000, got {a.max_iter}")
    if not a.out_dir:
        fail("OUT_DIR must not be empty")
    return a


def main(argv=None):
    a = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        os.makedirs(a.out_dir, exist_ok=True)
    except OSError as e:
        print(f"error: cannot create output folder '{a.out_dir}': {e.strerror or e}",
              file=sys.stderr, flush=True)
        return 1
    palette = build_palette()
    done = 0
    for frame in range(a.start, a.end):
        raw = render(frame, a.frames, a.width, a.height, a.max_iter, palette)
        name = f"frame_{frame:05d}.png"
        try:
            write_atomic(a.out_dir, name, png_bytes(a.width, a.height, raw))
        except OSError as e:
            print(f"error: cannot write '{os.path.join(a.out_dir, name)}': {e.strerror or e}",
                  file=sys.stderr, flush=True)
            return 1
        done += 1
        # Only now, with the file in place under its final name.
        print(f"ORCH_PROGRESS {done}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        status = main()
    except KeyboardInterrupt:
        status = 130
    except BrokenPipeError:
        # Nobody reads our stdout any more; do not let the exit flush fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print("error: stdout was closed", file=sys.stderr, flush=True)
        status = 1
    sys.exit(status)
