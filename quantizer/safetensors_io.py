"""Read and write safetensors one tensor at a time, so memory holds one tensor, not one shard.

`ShardReader` maps a file and hands out one tensor at a time, giving its pages back afterwards,
so file-backed pages of a whole shard never pile up in the process's resident set.
`ShardWriter` appends tensor data after a header area reserved up front and writes the header
last, padded with spaces to the reserved length (the format allows a space-padded header), so
the header can carry metadata that is only known at the end of a job.

Every tensor a job writes whose size is a multiple of `ALIGNMENT` bytes (every weight matrix of a model whose widths
are multiples of 32) starts at a multiple of it in its file; the others go last. Loaders map the file, so a
tensor's address in memory is the map's (page-aligned) plus its file offset; safetensors itself only keeps 8-byte
alignment, and PyTorch's CPU int8 weight-only kernel (`aten._weight_int8pack_mm`, which `torch.compile` picks for
torchao's Int8Tensor) segfaults on an int8 weight that is 8 but not 16 bytes aligned (measured with torch 2.13: a
9-token prefill of SmolLM2-1.7B's shape). `align_file` rewrites a file that save_pretrained wrote the same way.
"""

from __future__ import annotations

import json
import mmap
import os
import queue
import struct
import threading
from pathlib import Path
from typing import BinaryIO

import torch

DTYPES = {
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F32": torch.float32,
    "F64": torch.float64,
    "I8": torch.int8,
    "U8": torch.uint8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
NAMES = {dtype: name for name, dtype in DTYPES.items()}
COPY_CHUNK = 16 * 1024 * 1024
ALIGNMENT = 64  # bytes: a cache line, and what PyTorch's own CPU allocator aligns tensors to
# a tensor whose size is not a multiple of ALIGNMENT would shift every later one, so the writer holds it back to the
# end of the file; these are norms and biases, and one larger than this is written in place rather than held
HOLD_BACK_LIMIT = 16 * 1024 * 1024


def aligned_header_length(length: int) -> int:
    """The header length, padded with spaces, at which the data (after the 8-byte length field) starts aligned."""
    return length + (-(8 + length)) % ALIGNMENT


def aligned_size(nbytes: int) -> bool:
    return nbytes % ALIGNMENT == 0


class ShardReader:
    """A safetensors file's header, and its tensors one at a time.

    The file is memory-mapped (no copy on read, like safetensors' own loader), and the pages of a
    tensor are given back with madvise(MADV_DONTNEED) once it is done, so the process's resident
    set holds about one tensor of the file at a time instead of the whole shard.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
            size = os.fstat(f.fileno()).st_size
            # ACCESS_COPY: private and writable (torch wants a writable buffer), never written back
            self.map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size else None
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self.entries: dict[str, dict] = header
        self.data_start = 8 + length

    def in_file_order(self) -> list[str]:
        """Tensor names in the order their bytes appear in the file."""
        return sorted(self.entries, key=lambda k: self.entries[k]["data_offsets"][0])

    def aligned(self) -> bool:
        """Every tensor whose size is a multiple of ALIGNMENT starts at one in the file (the others cannot all:
        the format allows no gaps)."""
        return all(self.span(k)[0] % ALIGNMENT == 0 for k in self.entries if aligned_size(self.nbytes(k)))

    def span(self, key: str) -> tuple[int, int]:
        start, end = self.entries[key]["data_offsets"]
        return self.data_start + start, self.data_start + end

    def nbytes(self, key: str) -> int:
        start, end = self.span(key)
        return end - start

    def read(self, key: str) -> torch.Tensor:
        """The tensor, backed by the map (zero copy); call `release(key)` when done with it."""
        entry = self.entries[key]
        dtype = DTYPES[entry["dtype"]]
        start, end = self.span(key)
        if end == start:
            return torch.empty(entry["shape"], dtype=dtype)
        return torch.frombuffer(self.map, dtype=dtype, count=(end - start) // dtype.itemsize, offset=start).reshape(
            entry["shape"]
        )

    def view(self, key: str) -> memoryview:
        start, end = self.span(key)
        return memoryview(self.map)[start:end]

    def release(self, key: str) -> None:
        """Drop the tensor's pages from this process's memory."""
        start, end = self.span(key)
        page = mmap.PAGESIZE
        first = start // page * page
        length = (end - first + page - 1) // page * page
        if self.map is not None and length:
            self.map.madvise(mmap.MADV_DONTNEED, first, min(length, len(self.map) - first))

    def copy_to(self, key: str, writer: ShardWriter, name: str | None = None) -> None:
        """Pass a tensor through unchanged (its pages are released once written)."""
        entry = self.entries[key]
        writer.add_view(name or key, entry["dtype"], entry["shape"], self.view(key), lambda: self.release(key))

    def close(self) -> None:
        if self.map is not None:
            self.map.close()


class ShardWriter:
    """Append tensors to a safetensors file whose header is written (or rewritten) at the end.

    Writing happens on a background thread, so the disk works while the next weight is quantized;
    at most `in_flight` tensors wait in the queue, which bounds the memory it adds.
    """

    def __init__(self, path: Path, reserve: int, in_flight: int = 2):
        self.path = Path(path)
        self.reserve = aligned_header_length(reserve)
        self.entries: dict[str, dict] = {}
        self.held_back: list[tuple[str, str, list[int], torch.Tensor | bytes, int]] = []  # last (see ALIGNMENT)
        self.offset = 0
        self.file: BinaryIO = open(self.path, "wb")  # noqa: SIM115 - closed by the writer thread
        self.file.write(struct.pack("<Q", self.reserve) + b" " * self.reserve)
        self.queue: queue.Queue = queue.Queue(maxsize=in_flight)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._drain, name=f"write-{self.path.name}", daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        try:
            while (item := self.queue.get()) is not None:
                if isinstance(item, torch.Tensor):
                    self.file.write(memoryview(item.reshape(-1).view(torch.uint8).numpy()))  # no copy of the bytes
                elif isinstance(item, bytes):
                    self.file.write(item)
                else:
                    view, done = item
                    for offset in range(0, len(view), COPY_CHUNK):
                        self.file.write(view[offset : offset + COPY_CHUNK])
                    view.release()
                    done()
        except BaseException as exc:  # reported by close()
            self.error = exc
            while self.queue.get() is not None:  # keep draining so producers never block
                pass
        finally:
            self.file.close()

    def add(self, name: str, tensor: torch.Tensor) -> int:
        data = tensor.detach().contiguous().cpu()
        nbytes = data.numel() * data.element_size()
        if self._holds_back(nbytes):
            self.held_back.append((name, NAMES[data.dtype], list(data.shape), data, nbytes))
            return nbytes
        if nbytes:
            self.queue.put(data)
        self._record(name, NAMES[data.dtype], list(data.shape), nbytes)
        return nbytes

    def add_view(self, name: str, dtype: str, shape: list[int], view: memoryview, done) -> int:
        """Write bytes unchanged (a tensor that passes through); `done()` runs once they are written."""
        nbytes = len(view)
        if self._holds_back(nbytes):
            self.held_back.append((name, dtype, shape, bytes(view), nbytes))
            view.release()
            done()
            return nbytes
        if nbytes:
            self.queue.put((view, done))
        self._record(name, dtype, shape, nbytes)
        return nbytes

    def _holds_back(self, nbytes: int) -> bool:
        return not aligned_size(nbytes) and nbytes <= HOLD_BACK_LIMIT

    def _record(self, name: str, dtype: str, shape: list[int], nbytes: int) -> None:
        self.entries[name] = {"dtype": dtype, "shape": shape, "data_offsets": [self.offset, self.offset + nbytes]}
        self.offset += nbytes

    def close(self, metadata: dict[str, str]) -> None:
        for name, dtype, shape, data, nbytes in self.held_back:
            if nbytes:
                self.queue.put(data)
            self._record(name, dtype, shape, nbytes)
        self.held_back.clear()
        self.queue.put(None)
        self.thread.join()
        if self.error:
            raise self.error
        write_header(self.path, self.reserve, {"__metadata__": metadata, **self.entries})


def write_header(path: Path, length: int, header: dict) -> None:
    encoded = json.dumps(header, separators=(",", ":")).encode()
    if len(encoded) > length:
        raise ValueError(f"{path.name}: the header ({len(encoded)} bytes) does not fit the {length} reserved")
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(encoded + b" " * (length - len(encoded)))


def align_file(path: Path) -> bool:
    """Rewrite a safetensors file (save_pretrained's) so that every tensor of a size that is a multiple of ALIGNMENT
    starts at a multiple of it: the same tensors, names and metadata, the odd-sized ones moved to the end. False,
    and nothing written, when it is aligned already. The copy is written beside the file and replaces it only once
    complete."""
    reader = ShardReader(path)
    staging = path.with_name(f".{path.name}.aligning")
    try:
        if reader.aligned():
            return False
        # the same header with new offsets: at most as many digits as the data's length, each
        reserve = len(json.dumps({"__metadata__": reader.metadata, **reader.entries}, separators=(",", ":")))
        reserve += 2 * len(str(reader.map.size() if reader.map else 0)) * len(reader.entries)
        writer = ShardWriter(staging, reserve)
        for key in reader.in_file_order():
            reader.copy_to(key, writer)
        writer.close(reader.metadata)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    finally:
        reader.close()
    os.replace(staging, path)
    return True


def align_folder(folder: Path) -> list[str]:
    """`align_file` for each safetensors file of a model folder; the names of those rewritten."""
    return [p.name for p in sorted(Path(folder).glob("*.safetensors")) if align_file(p)]


def weights_bytes(folder: Path) -> int:
    """Bytes of the safetensors weight files in a model folder (what its size on the Hub is made of)."""
    return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))
