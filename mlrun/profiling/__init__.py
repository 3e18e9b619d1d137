"""`mlrun profile`: step-time breakdown, FLOPs and MFU, memory split, the technique matrix, advice."""
