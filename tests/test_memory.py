"""Freed memory kept for reuse (flexunet_k3.memory), in a fresh interpreter."""

import subprocess
import sys

REFAULTS = """
import resource, sys
if sys.argv[1] == "reuse":
    from flexunet_k3.memory import keep_freed_memory
    assert keep_freed_memory()
bytearray(2**26)  # 64 MiB, zero-filled and freed at once
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
bytearray(2**26)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_reused_freed_memory_is_not_page_faulted_in_again():
    def faults(mode):
        done = subprocess.run(
            [sys.executable, "-c", REFAULTS, mode], capture_output=True, text=True, check=True
        )
        return int(done.stdout)

    assert faults("default") > 15_000  # 16,384 pages of 4 KiB, mapped anew
    assert faults("reuse") < 1_000
