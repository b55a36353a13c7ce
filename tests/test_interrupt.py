"""Ctrl-C held until a safe point (flexunet_k3.interrupt)."""

import signal

import pytest

from flexunet_k3.interrupt import Interrupted, deferred, raise_if_pressed
from flexunet_k3.progress import track


def test_ctrl_c_waits_for_a_safe_point_and_a_second_one_stops_at_once():
    with deferred():
        with deferred():  # nested: held by the outer one
            raise_if_pressed()
            signal.raise_signal(signal.SIGINT)  # as if in native code: nothing raised there
        with pytest.raises(Interrupted):
            raise_if_pressed()
        with pytest.raises(KeyboardInterrupt) as forced:
            signal.raise_signal(signal.SIGINT)
        assert not isinstance(forced.value, Interrupted)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with deferred():
        raise_if_pressed()  # a new run starts with no Ctrl-C held


def test_a_held_ctrl_c_stops_a_tracked_loop_before_its_next_item():
    done = []
    with deferred(), pytest.raises(Interrupted):
        for item in track(range(5), "items"):
            done.append(item)
            if item == 1:
                signal.raise_signal(signal.SIGINT)
    assert done == [0, 1]
    assert list(track(range(3), "items")) == [0, 1, 2]  # outside deferred(): nothing held
