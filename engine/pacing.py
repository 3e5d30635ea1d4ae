"""Outbound pacing: send Twilio audio just ahead of real time, never far ahead.

Twilio plays what it is sent at real time and buffers the rest. A small lead
keeps playback smooth through network jitter; a large one would make `clear`
slow to silence the caller and marks report playback late. The pacer models
Twilio's play-out clock: each 20 ms frame sent ends `frame_s` after the later of
now and the end of what was sent before.
"""

from __future__ import annotations


class OutboundPacer:
    """Paces bot audio to Twilio: at most `lead_s` ahead of real-time playback; keeps the play-out clock."""

    def __init__(self, lead_s: float, frame_s: float = 0.02) -> None:
        self.lead_s = lead_s
        self.frame_s = frame_s
        self.play_until = 0.0

    def may_send(self, now: float) -> bool:
        """True if one more frame keeps the queued audio within the lead."""
        return max(self.play_until, now) + self.frame_s - now <= self.lead_s + 1e-9

    def sent(self, now: float) -> None:
        self.play_until = max(self.play_until, now) + self.frame_s

    def next_send_at(self) -> float:
        """The earliest time another frame fits."""
        return self.play_until + self.frame_s - self.lead_s

    def queued_s(self, now: float) -> float:
        """Audio sent but (by the model) not yet played."""
        return max(0.0, self.play_until - now)

    def reset(self, now: float) -> None:
        """After `clear`: Twilio has dropped everything queued."""
        self.play_until = now
