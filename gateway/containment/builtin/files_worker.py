"""The built-in ``files`` tools as they run inside a contained worker (standard library only).

Reads one JSON request on stdin, writes one JSON answer on stdout. It trusts nothing about paths: the sandbox
around it (mounts, Landlock, the worker's uid) decides what exists and what may be touched, so a path that
escapes the agent's grants simply fails here with the kernel's error. Relative paths are taken from the
agent's workspace (the working directory).
"""

import fnmatch
import json
import os
import re
import stat
import sys
import time

MAX_ENTRIES = 1000
MAX_SEARCH_FILE = 1 << 20


def kind(mode):
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def read_file(req, limit):
    path = req["path"]
    offset = int(req.get("offset") or 0)
    want = min(int(req.get("max_bytes") or limit), limit)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        f.seek(offset)
        data = f.read(want + 1)
    truncated = len(data) > want
    data = data[:want]
    return {
        "path": path,
        "size": size,
        "offset": offset,
        "truncated": truncated,
        "content": data.decode("utf-8", "replace"),
        "binary": b"\x00" in data,
    }


def write_file(req, limit):
    path = req["path"]
    content = req.get("content", "")
    if not isinstance(content, str):
        raise ValueError("content must be a string")
    data = content.encode("utf-8")
    if req.get("create_dirs"):
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
    mode = "ab" if req.get("append") else "wb"
    with open(path, mode) as f:
        f.write(data)
    return {"path": path, "bytes_written": len(data), "appended": bool(req.get("append"))}


def list_dir(req, limit):
    path = req.get("path") or "."
    entries: list = []
    truncated = False
    with os.scandir(path) as it:
        for entry in it:
            if len(entries) >= MAX_ENTRIES:
                truncated = True
                break
            try:
                st = entry.stat(follow_symlinks=False)
                entries.append({"name": entry.name, "type": kind(st.st_mode), "size": st.st_size})
            except OSError as exc:
                entries.append({"name": entry.name, "type": "unknown", "error": exc.strerror})
    entries.sort(key=lambda e: e["name"])
    return {"path": path, "entries": entries, "truncated": truncated}


def search(req, limit):
    root = req.get("path") or "."
    pattern = re.compile(req["pattern"])
    glob = req.get("glob") or "*"
    max_results = min(int(req.get("max_results") or 100), MAX_ENTRIES)
    matches: list = []
    budget = limit
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            if not fnmatch.fnmatch(name, glob):
                continue
            full = os.path.join(dirpath, name)
            try:
                st = os.lstat(full)
                if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_SEARCH_FILE:
                    continue
                with open(full, "rb") as f:
                    text = f.read().decode("utf-8", "replace")
            except OSError:
                continue
            for lineno, line in enumerate(text.splitlines(), 1):
                if pattern.search(line):
                    item = {"path": full, "line": lineno, "text": line[:500]}
                    budget -= len(full) + len(item["text"]) + 40
                    if len(matches) >= max_results or budget < 0:
                        return {"path": root, "matches": matches, "truncated": True}
                    matches.append(item)
    return {"path": root, "matches": matches, "truncated": False}


def stat_path(req, limit):
    path = req["path"]
    st = os.lstat(path)
    out = {
        "path": path,
        "type": kind(st.st_mode),
        "size": st.st_size,
        "mode": f"{stat.S_IMODE(st.st_mode):04o}",
        "modified": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(st.st_mtime)),
        "uid": st.st_uid,
    }
    if stat.S_ISLNK(st.st_mode):
        out["target"] = os.readlink(path)
    return out


OPS = {"read_file": read_file, "write_file": write_file, "list_dir": list_dir, "search": search, "stat": stat_path}


def main():
    req = json.loads(sys.stdin.read())
    op = OPS.get(req.get("op"))
    if op is None:
        answer = {"ok": False, "error": "unknown operation"}
    else:
        try:
            answer = {"ok": True, "result": op(req, int(req.get("limit") or 65536))}
        except OSError as exc:
            where = exc.filename if exc.filename is not None else req.get("path")
            answer = {"ok": False, "error": f"{where}: {exc.strerror or exc}"}
        except (ValueError, KeyError, TypeError, re.error) as exc:
            answer = {"ok": False, "error": f"bad request: {exc}"}
    sys.stdout.write(json.dumps(answer))
    sys.stdout.flush()


main()
