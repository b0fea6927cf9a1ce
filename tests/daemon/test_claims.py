"""fluxd.claims: one writer per path; a reconnecting client waits for its old session to let go."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from fluxd.claims import Holder, UploadClaims
from fluxproto import Conflict, FluxError

ALIVE: Callable[[], bool] = lambda: False  # noqa: E731 - the holder's connection is open
LONG = 30.0  # a grace that must never run out in these tests (a bound, not a wait)


def held(
    closed: Callable[[], bool] = ALIVE,
    account: str = "alice",
    heard: Callable[[], float] = lambda: 0.0,
    end: Callable[[], None] = lambda: None,
) -> Holder:
    """A holder (or claimant); by default alice's, open, silent since forever."""
    return Holder(account, closed, heard, end)


def test_claim_and_release() -> None:
    async def main() -> list[str]:
        claims = UploadClaims()
        seen = []
        async with claims.claim("a", held(), LONG):
            seen.append("first")
        async with claims.claim("a", held(), LONG):  # released: free again at once
            seen.append("second")
        return seen

    assert asyncio.run(main()) == ["first", "second"]


def test_second_claim_while_holder_alive_is_a_conflict() -> None:
    async def main() -> None:
        claims = UploadClaims()
        async with claims.claim("dir/f", held(), LONG):
            with pytest.raises(Conflict, match="/dir/f is being uploaded by another session"):
                async with claims.claim("dir/f", held(account="bob"), LONG):
                    raise AssertionError("must not get the claim")
        async with claims.claim("dir/f", held(), LONG):  # the failed claim left nothing behind
            pass

    asyncio.run(main())


def test_conflict_is_a_flux_error_with_its_wire_code() -> None:
    async def main() -> Conflict:
        claims = UploadClaims()
        async with claims.claim("k", held(), LONG):
            try:
                async with claims.claim("k", held(account="bob"), LONG):
                    pass
            except Conflict as exc:
                return exc
        raise AssertionError("no conflict")

    exc = asyncio.run(main())
    assert isinstance(exc, FluxError)
    assert exc.code == 409


def test_different_keys_do_not_conflict() -> None:
    async def main() -> list[str]:
        claims = UploadClaims()
        both = []
        async with claims.claim("a", held(), LONG), claims.claim("b", held(), LONG):
            both.append("a+b")
        return both

    assert asyncio.run(main()) == ["a+b"]


def test_claim_after_closed_holder_waits_for_its_release() -> None:
    async def main() -> list[str]:
        claims = UploadClaims()
        order: list[str] = []
        asked = asyncio.Event()

        def holder_closed() -> bool:
            asked.set()  # the second claim has found the first and is about to wait
            return True

        async def second() -> None:
            async with claims.claim("f", held(), LONG):
                order.append("second acquired")

        async with claims.claim("f", held(holder_closed), LONG):
            task = asyncio.create_task(second())
            await asyncio.wait_for(asked.wait(), LONG)
            assert not task.done()
            order.append("first releasing")
        await asyncio.wait_for(task, LONG)
        return order

    assert asyncio.run(main()) == ["first releasing", "second acquired"]


def test_closing_holder_that_outlives_the_grace_is_a_conflict() -> None:
    async def main() -> list[str]:
        claims = UploadClaims()
        order: list[str] = []
        async with claims.claim("f", held(lambda: True), LONG):
            with pytest.raises(Conflict, match="/f is still being closed by a previous session"):
                async with claims.claim("f", held(), 0.05):
                    order.append("must not happen")
            order.append("second gave up")
        async with claims.claim("f", held(), LONG):  # once released, the path is free
            order.append("third acquired")
        return order

    assert asyncio.run(main()) == ["second gave up", "third acquired"]


def test_only_one_of_several_waiters_gets_the_claim() -> None:
    async def main() -> list[object]:
        claims = UploadClaims()
        asked = 0
        both_waiting = asyncio.Event()
        winner_may_finish = asyncio.Event()

        def holder_closed() -> bool:
            nonlocal asked
            asked += 1
            if asked == 2:
                both_waiting.set()
            return True

        async def waiter(name: str) -> str:
            async with claims.claim("f", held(account=name), LONG):
                await winner_may_finish.wait()
            return name

        async with claims.claim("f", held(holder_closed), LONG):
            tasks = [asyncio.create_task(waiter(n)) for n in ("b", "c")]
            await asyncio.wait_for(both_waiting.wait(), LONG)
        # The first waiter to run takes the claim; the other finds a live holder.
        done, _ = await asyncio.wait(tasks, timeout=LONG, return_when=asyncio.FIRST_COMPLETED)
        winner_may_finish.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert len(done) == 1
        return results

    results = asyncio.run(main())
    assert sorted(type(r).__name__ for r in results) == ["Conflict", "str"]


def test_release_on_exception() -> None:
    async def main() -> None:
        claims = UploadClaims()
        with pytest.raises(ValueError, match="disk on fire"):
            async with claims.claim("f", held(), LONG):
                raise ValueError("disk on fire")
        async with claims.claim("f", held(), LONG):
            pass

    asyncio.run(main())


def test_release_on_cancellation_wakes_a_waiter() -> None:
    async def main() -> str:
        claims = UploadClaims()
        inside = asyncio.Event()
        asked = asyncio.Event()

        def holder_closed() -> bool:
            asked.set()
            return True

        async def holder() -> None:
            async with claims.claim("f", held(holder_closed), LONG):
                inside.set()
                await asyncio.Event().wait()  # until cancelled

        async def second() -> str:
            async with claims.claim("f", held(), LONG):
                return "acquired"

        hold = asyncio.create_task(holder())
        await asyncio.wait_for(inside.wait(), LONG)
        task = asyncio.create_task(second())
        await asyncio.wait_for(asked.wait(), LONG)
        hold.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hold
        return await asyncio.wait_for(task, LONG)

    assert asyncio.run(main()) == "acquired"


# --- a claim of the same subject: wait for a silent holder, supersede it once stale ------------

QUICK = 0.2  # a stale_after these tests expect to run out


def test_same_subject_waits_for_a_silent_holder_that_lets_go() -> None:
    async def main() -> list[str]:
        claims = UploadClaims(stale_after=LONG)
        order: list[str] = []
        ended: list[str] = []
        asked = asyncio.Event()

        def heard() -> float:
            asked.set()  # the second claim is looking at the holder
            return 0.0

        async def second() -> None:
            async with claims.claim("f", held(), LONG):
                order.append("second acquired")

        async with claims.claim("f", held(heard=heard, end=lambda: ended.append("x")), LONG):
            task = asyncio.create_task(second())
            await asyncio.wait_for(asked.wait(), LONG)
            order.append("first releasing")
        await asyncio.wait_for(task, LONG)
        assert ended == []  # it let go by itself: nobody was cut off
        return order

    assert asyncio.run(main()) == ["first releasing", "second acquired"]


def test_same_subject_supersedes_a_holder_silent_past_stale_after() -> None:
    async def main() -> list[str]:
        claims = UploadClaims(stale_after=QUICK)
        order: list[str] = []
        closed = asyncio.Event()

        async def stale_holder() -> None:
            holder = held(closed.is_set, end=closed.set)  # end() closes its connection
            async with claims.claim("f", holder, LONG):
                await closed.wait()
                order.append("stale holder ended")

        hold = asyncio.create_task(stale_holder())
        await asyncio.sleep(0)  # one loop turn: the task takes the claim (no timing involved)
        async with claims.claim("f", held(), LONG):
            order.append("newcomer acquired")
        await asyncio.wait_for(hold, LONG)
        return order

    assert asyncio.run(main()) == ["stale holder ended", "newcomer acquired"]


def test_same_subject_conflicts_at_once_with_a_holder_that_shows_life() -> None:
    async def main() -> None:
        claims = UploadClaims(stale_after=LONG)
        beats = iter(range(1000))
        ended: list[str] = []
        holder = held(heard=lambda: float(next(beats)), end=lambda: ended.append("x"))
        async with claims.claim("f", holder, LONG):
            with pytest.raises(Conflict, match="another session of yours"):
                async with claims.claim("f", held(), LONG):
                    raise AssertionError("must not get the claim")
        assert ended == []

    asyncio.run(main())


def test_a_holder_with_nothing_to_say_is_asked_and_its_answer_is_life() -> None:
    """A live client that has every chunk in flight sends nothing until it is acknowledged
    (over TCP nothing else shows it is there): the waiting claim PINGs it, and its PONG keeps
    the path; a holder that does not answer is superseded as before."""

    async def main() -> None:
        claims = UploadClaims(stale_after=LONG)
        pongs: list[float] = []  # the holder's client answers each PING at once
        holder = Holder(
            "alice", ALIVE, lambda: float(len(pongs)), lambda: None, lambda: pongs.append(1.0)
        )
        async with claims.claim("f", holder, LONG):
            with pytest.raises(Conflict, match="another session of yours"):
                async with claims.claim("f", held(), LONG):
                    raise AssertionError("must not get the claim")
        assert pongs, "it was asked"

    asyncio.run(main())


def test_another_subject_never_waits_even_for_a_silent_holder() -> None:
    async def main() -> None:
        claims = UploadClaims(stale_after=LONG)
        async with claims.claim("f", held(), LONG):
            with pytest.raises(Conflict, match=r"another session$"):
                async with claims.claim("f", held(account="mallory"), LONG):
                    raise AssertionError("must not get the claim")

    asyncio.run(main())
