"""Byte units for printed figures: memory in binary mebibytes (MiB, as allocators and `nvidia-smi` count),
file sizes in decimal megabytes (MB, as `ls -h --si` and the export/compress tables count)."""

MIB = 2**20
