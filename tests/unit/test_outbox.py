"""The outbox: bounded queue, backpressure, and acks only once the peer has
proved it read the frames (a pong to a later ping).  Fake clock, fake wire."""

from __future__ import annotations

from twisted.internet.task import Clock

from dkserver.ws.outbox import Outbox, ProofBudget


class FakeWire:
    def __init__(self) -> None:
        self.written: list[str] = []
        self.pings: list[bytes] = []
        self.confirmed: list[list] = []
        self.overflows = 0

    def write(self, frame: str) -> None:
        self.written.append(frame)


def make(limit: int = 3, clock: Clock | None = None, **options):
    clock = Clock() if clock is None else clock
    wire = FakeWire()
    box = Outbox(
        write=wire.write,
        ping=wire.pings.append,
        clock=clock,
        on_confirmed=wire.confirmed.append,
        on_overflow=lambda: setattr(wire, "overflows", wire.overflows + 1),
        limit=limit,
        **options,
    )
    return clock, wire, box


def test_frames_are_confirmed_only_by_the_pong_to_a_later_ping():
    clock, wire, box = make()
    box.send("a", ack=1)
    box.send("b", ack=2)
    assert wire.written == ["a", "b"]
    assert wire.pings == []  # not before the end of the reactor turn
    clock.advance(0)
    assert len(wire.pings) == 1  # one ping covers both writes of the turn
    assert wire.confirmed == []
    box.on_pong(b"something else")
    assert wire.confirmed == []
    box.on_pong(wire.pings[0])
    assert wire.confirmed == [[1, 2]]


def test_frames_written_after_the_ping_get_a_ping_of_their_own():
    clock, wire, box = make(limit=10)
    box.send("a", ack=1)
    clock.advance(0)
    box.send("b", ack=2)
    clock.advance(0)
    assert len(wire.pings) == 2  # the second is in flight before the first pong
    box.on_pong(wire.pings[0])
    assert wire.confirmed == [[1]]
    box.on_pong(wire.pings[1])
    assert wire.confirmed == [[1], [2]]


def test_a_pong_to_a_later_ping_confirms_what_earlier_pings_covered():
    # RFC 6455 §5.5.3: a peer may answer only the most recent ping.
    clock, wire, box = make(limit=10)
    for ack in (1, 2, 3):
        box.send(f"m{ack}", ack=ack)
        clock.advance(0)
    assert len(wire.pings) == 3
    box.on_pong(wire.pings[1])
    assert wire.confirmed == [[1, 2]]
    box.on_pong(wire.pings[0])  # stale: already confirmed
    assert wire.confirmed == [[1, 2]]
    box.on_pong(wire.pings[2])
    assert wire.confirmed == [[1, 2], [3]]


def test_lost_connection_confirms_nothing():
    clock, wire, box = make()
    box.send("a", ack=1)
    clock.advance(0)
    box.close()
    box.on_pong(wire.pings[0])
    assert wire.confirmed == []


def test_clean_close_confirms_what_was_written():
    _, wire, box = make()
    box.send("a", ack=1)
    box.stop()
    assert not box.send("b", ack=2)
    box.confirm_all()
    assert wire.confirmed == [[1]]


def test_system_frames_without_ack_need_no_proof():
    clock, wire, box = make()
    box.send("sys")
    clock.advance(1)
    assert wire.pings == [] and wire.confirmed == []


def test_paused_transport_queues_and_resume_writes_in_order():
    clock, wire, box = make(limit=5)
    box.pauseProducing()
    for i in range(3):
        assert box.send(f"m{i}", ack=i)
    assert wire.written == []
    assert len(box) == 3
    box.resumeProducing()
    assert wire.written == ["m0", "m1", "m2"]
    clock.advance(0)
    box.on_pong(wire.pings[-1])
    assert wire.confirmed == [[0, 1, 2]]


def test_overflow_stops_and_never_confirms_the_dropped_frames():
    _, wire, box = make(limit=2)
    box.send("written", ack="w")
    box.pauseProducing()
    assert box.send("q1", ack="q1")
    assert box.send("q2", ack="q2")
    assert not box.send("q3", ack="q3")
    assert wire.overflows == 1
    box.resumeProducing()
    assert wire.written == ["written"]
    box.confirm_all()  # the peer answered our close: it read "written" only
    assert wire.confirmed == [["w"]]


def test_wait_writable_fires_when_queue_drains():
    _, _, box = make(limit=5)
    box.pauseProducing()
    box.send("x", ack=None)
    fired = []
    box.wait_writable().addCallback(fired.append)
    assert fired == []
    box.resumeProducing()
    assert fired == [True]
    assert box.has_room()


def test_wait_writable_reports_close():
    _, _, box = make()
    box.pauseProducing()
    fired = []
    box.wait_writable().addCallback(fired.append)
    box.stopProducing()
    assert fired == [False]


def test_proof_pings_are_prompt_for_a_burst_then_rate_limited():
    clock, wire, box = make(limit=100, proof_burst=2, proof_interval=0.5)
    box.send("a", ack=1)
    clock.advance(0)
    box.send("b", ack=2)
    clock.advance(0)
    assert len(wire.pings) == 2  # the burst: each right behind its frame
    box.send("c", ack=3)
    box.send("d", ack=4)
    clock.advance(0.4)
    assert len(wire.pings) == 2  # bucket empty: waits for a token
    clock.advance(0.1)  # one token per 0.5 s
    assert len(wire.pings) == 3  # one ping for both waiting frames
    for ping in wire.pings:
        box.on_pong(ping)
    assert wire.confirmed == [[1], [2], [3, 4]]
    # Quiet again for long enough: the bucket refills, prompt once more.
    clock.advance(5)
    box.send("e", ack=5)
    clock.advance(0)
    assert len(wire.pings) == 4


def test_busy_connection_gets_at_most_one_ping_per_interval():
    clock, wire, box = make(limit=1000, proof_burst=4, proof_interval=0.5)
    for _ in range(1000):  # a frame every 10 ms for 10 s, all read at once
        box.send("m", ack=1)
        clock.advance(0.01)
        for ping in wire.pings[len(wire.confirmed) :]:
            box.on_pong(ping)
    assert len(wire.pings) <= 4 + 10 / 0.5 + 1


def test_unanswered_proof_ping_counts_as_too_slow():
    clock, wire, box = make(limit=10, proof_timeout=60.0)
    box.send("a", ack=1)
    clock.advance(0)
    assert len(wire.pings) == 1
    clock.advance(59)
    assert wire.overflows == 0
    clock.advance(2)
    assert wire.overflows == 1
    assert wire.confirmed == []


def test_answered_proof_ping_cancels_its_deadline():
    clock, wire, box = make(limit=10)
    box.send("a", ack=1)
    clock.advance(0)
    box.on_pong(wire.pings[0])
    clock.advance(120)
    assert wire.overflows == 0 and wire.confirmed == [[1]]


def test_one_reactor_call_watches_all_proof_deadlines():
    """A proof per broadcast recipient must not cost a DelayedCall each."""
    clock, wire, box = make(limit=10, proof_burst=10)
    for i in range(5):
        box.send(f"m{i}", ack=i)
        clock.advance(0)
    assert len(wire.pings) == 5
    assert len(clock.getDelayedCalls()) == 1
    for ping in wire.pings:
        box.on_pong(ping)
    assert len(clock.getDelayedCalls()) == 1  # a pong leaves it alone
    clock.advance(60)
    assert clock.getDelayedCalls() == [] and wire.overflows == 0


def test_a_later_proof_keeps_its_own_deadline_after_an_earlier_pong():
    clock, wire, box = make(limit=10, proof_timeout=60.0)
    box.send("a", ack=1)
    clock.advance(0)
    clock.advance(10)
    box.on_pong(wire.pings[0])
    clock.advance(20)  # t=30
    box.send("b", ack=2)
    clock.advance(0)
    assert len(wire.pings) == 2
    clock.advance(59)  # t=89: the first deadline (t=60) passed, not b's
    assert wire.overflows == 0
    clock.advance(2)
    assert wire.overflows == 1
    assert wire.confirmed == [[1]]


def test_a_stopped_outbox_has_no_deadline():
    clock, wire, box = make(limit=10, proof_timeout=60.0)
    box.send("a", ack=1)
    clock.advance(0)
    box.stop()
    clock.advance(120)
    assert wire.overflows == 0
    box.on_pong(wire.pings[0])  # a late pong still confirms
    assert wire.confirmed == [[1]]


def test_unconfirmed_frames_are_bounded():
    from dkserver.ws.outbox import UNCONFIRMED_FACTOR

    _, wire, box = make(limit=2)
    cap = UNCONFIRMED_FACTOR * 2
    for i in range(cap):
        assert box.send(f"m{i}", ack=i)  # the peer reads, but never pongs
    assert wire.overflows == 0
    box.send("over", ack=cap)  # one more than the cap
    assert wire.overflows == 1
    assert not box.send("after", ack=cap + 1)


def test_a_full_window_of_unconfirmed_frames_is_proved_at_once():
    clock, wire, box = make(limit=3, proof_burst=1)
    box.send("a", ack=1)
    clock.advance(0)
    box.on_pong(wire.pings[0])  # the bucket is empty now
    for i in range(3):
        box.send(f"b{i}", ack=10 + i)
    clock.advance(0)
    assert len(wire.pings) == 2  # not 0.5 s later: the window is full


# -- the proof ping inside the turn's last message ----------------------------------


class SplittingWire(FakeWire):
    """Records ``write_with_proof`` as ("split", frame, ping payload)."""

    def __init__(self) -> None:
        super().__init__()
        self.accept_split = True

    def write_with_proof(self, frame: str, payload: bytes) -> bool:
        if not self.accept_split:
            return False
        self.written.append(("split", frame, payload))
        return True


def make_splitting(limit: int = 10, **options):
    clock = Clock()
    wire = SplittingWire()
    box = Outbox(
        write=wire.write,
        ping=wire.pings.append,
        clock=clock,
        on_confirmed=wire.confirmed.append,
        on_overflow=lambda: setattr(wire, "overflows", wire.overflows + 1),
        limit=limit,
        write_with_proof=wire.write_with_proof,
        **options,
    )
    return clock, wire, box


def test_last_message_of_the_turn_carries_the_proof_ping_inside_it():
    clock, wire, box = make_splitting()
    for i in range(3):
        box.send(f"m{i}", ack=i)
    assert wire.written == ["m0", "m1"]  # the last one is held to the turn's end
    clock.advance(0)
    assert len(wire.written) == 3 and wire.pings == []
    kind, frame, payload = wire.written[2]
    assert (kind, frame) == ("split", "m2")
    box.on_pong(payload)
    assert wire.confirmed == [[0, 1, 2]]  # one ping for the whole turn


def test_a_frame_without_ack_after_the_held_one_flushes_it_whole_and_in_order():
    clock, wire, box = make_splitting()
    box.send("m0", ack=0)
    box.send("system")
    assert wire.written == ["m0", "system"]
    clock.advance(0)
    assert len(wire.pings) == 1  # an ordinary ping behind both
    box.on_pong(wire.pings[0])
    assert wire.confirmed == [[0]]


def test_no_split_when_the_bucket_is_empty():
    clock, wire, box = make_splitting(proof_burst=1, proof_interval=0.5)
    box.send("m0", ack=0)
    clock.advance(0)
    box.send("m1", ack=1)
    assert wire.written[1] == "m1"  # written at once: its ping comes later
    clock.advance(0.5)
    assert len(wire.pings) == 1
    box.on_pong(wire.written[0][2])
    box.on_pong(wire.pings[0])
    assert wire.confirmed == [[0], [1]]


def test_held_frame_is_dropped_on_stop_and_never_confirmed():
    clock, wire, box = make_splitting()
    box.send("m0", ack=0)
    box.stop()  # e.g. shutdown's close frame: nothing may follow it
    clock.advance(1)
    assert wire.written == [] and wire.pings == []
    box.confirm_all()
    assert wire.confirmed == []  # it stays pending


def test_split_refused_by_a_closing_connection_confirms_nothing():
    clock, wire, box = make_splitting()
    wire.accept_split = False
    box.send("m0", ack=0)
    clock.advance(0)
    assert wire.written == [] and wire.pings == []
    box.confirm_all()
    assert wire.confirmed == []


# -- extra proofs while the server has CPU to spare ---------------------------------


class FakeCpu:
    """The process's CPU seconds, advanced by the test."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __call__(self) -> float:
        return self.seconds


def make_budget(clock: Clock, cpu: FakeCpu, **options) -> ProofBudget:
    options = {"every": 4, "rate": 100.0, "busy": 0.8, "sample": 0.25, **options}
    return ProofBudget(clock, cpu=cpu, **options)


def test_budget_refills_with_the_share_of_cpu_left_unused():
    clock, cpu = Clock(), FakeCpu()
    budget = make_budget(clock, cpu)
    assert not budget.take()  # nothing measured yet
    clock.advance(0.25)  # an idle process
    assert not budget.take()  # that sample sets the refill: 100 a second
    clock.advance(0.125)
    assert [budget.take() for _ in range(13)].count(True) == 12
    clock.advance(0.5)  # no more than its burst (rate x sample) piles up
    assert [budget.take() for _ in range(30)].count(True) == 25
    cpu.seconds += 0.25 * 0.8 * 0.7  # 0.7 of its busy mark (0.8 of a core)
    clock.advance(0.25)
    # Refilled at the last sample's rate; running out takes the next sample.
    assert [budget.take() for _ in range(30)].count(True) == 25
    clock.advance(0.25)
    assert [budget.take() for _ in range(30)].count(True) == 7  # 100 x 0.3 / 4


def test_budget_of_a_busy_process_is_empty():
    clock, cpu = Clock(), FakeCpu()
    budget = make_budget(clock, cpu)
    for _ in range(8):
        clock.advance(0.25)
        cpu.seconds += 0.25 * 0.8  # its busy mark
        assert not budget.take()


def idle_budget(clock: Clock, **options) -> ProofBudget:
    """A budget that has measured an idle process (rate 100 a second)."""
    budget = make_budget(clock, FakeCpu(), **options)
    clock.advance(0.25)
    budget.take()
    clock.advance(1)
    return budget


def test_spare_cpu_proves_every_few_frames_whatever_the_bucket_holds():
    clock = Clock()
    budget = idle_budget(clock, every=4)
    _, wire, box = make(
        limit=100, clock=clock, proof_burst=1, proof_interval=0.5, proof_budget=budget
    )
    box.send("m", ack=0)
    clock.advance(0)
    assert len(wire.pings) == 1  # the bucket's token; it is empty now
    for turn in range(5):
        for i in range(4):
            box.send("m", ack=1 + 4 * turn + i)
        clock.advance(0)  # a turn that wrote 4 frames: proved at its end
        assert len(wire.pings) == 2 + turn
    box.send("m", ack=21)  # fewer than 4: the bucket's pace again
    clock.advance(0.3)
    assert len(wire.pings) == 6
    clock.advance(0.2)
    assert len(wire.pings) == 7
    for ping in wire.pings:
        box.on_pong(ping)
    assert [len(acks) for acks in wire.confirmed] == [1, 4, 4, 4, 4, 4, 1]


def test_without_spare_cpu_a_busy_stream_is_proved_at_the_buckets_pace():
    clock, cpu = Clock(), FakeCpu()
    budget = make_budget(clock, cpu, every=4)
    _, wire, box = make(
        limit=1000, clock=clock, proof_burst=4, proof_interval=0.5, proof_budget=budget
    )
    for _ in range(1000):  # 10 frames every 10 ms for 10 s, all read at once
        for _ in range(10):
            box.send("m", ack=1)
        cpu.seconds += 0.01  # a saturated process
        clock.advance(0.01)
        for ping in wire.pings[len(wire.confirmed) :]:
            box.on_pong(ping)
    assert len(wire.pings) <= 4 + 10 / 0.5 + 1


def test_extra_proofs_are_bounded_by_the_budget():
    clock = Clock()
    budget = idle_budget(clock, every=1)  # 100 extra pings a second at most
    boxes = [
        make(limit=1000, clock=clock, proof_burst=1, proof_budget=budget)[1:]
        for _ in range(5)
    ]
    for _ in range(100):  # 1 s: every connection gets a frame every 10 ms
        for _, box in boxes:
            box.send("m", ack=1)
        clock.advance(0.01)
    pings = sum(len(wire.pings) for wire, _ in boxes)
    # The budget's 1 s of refill plus its burst (rate x sample), plus each
    # bucket's burst and 1 s of its own pace.
    assert pings <= 100 + 25 + 5 * (1 + 2)
    assert pings > 5 * (1 + 2)  # more than the buckets alone
