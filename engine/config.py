"""Typed engine configuration: every section, key and default, with what each means.

`engine.config_load` reads it (a TOML file, then `ENGINE_<SECTION>__<KEY>` environment
overrides) and validates it at start-up.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from ipc.schema import ProcName

E164 = re.compile(r"\+[1-9]\d{6,14}")
"""A phone number as Twilio takes it: +, country code and number, no spaces."""
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Positive = Annotated[float, msgspec.Meta(gt=0)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Name = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,23}$")]


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class EngineSection(_Section):
    """[engine]: this engine's name on the host, its call capacity, where its sockets live, logging and tracing."""

    instance: Name = "engine"
    """Prefix of shared-memory segments and socket directories (two engines on one host need two names)."""
    max_calls: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 16
    admit_max_response_ms: Annotated[int, msgspec.Meta(ge=0, le=60000)] = 2000
    """Replies' p90 response time above this lowers the call limit (callers past it hear the busy line); 0: off."""
    admit_max_cpu_pct: Annotated[int, msgspec.Meta(ge=0, le=100)] = 0
    """Host CPU (all cores, last 10 s) above this lets no call in while one is up; 0: off (the default: a small box
    runs near 100 % in bursts while replies stay fast, and replies are what callers feel). See engine/admission.py."""
    runtime_dir: str = ""
    """Where bus sockets live; empty means the system temp dir."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_private: bool = False
    """Write callers' phone numbers and what was said into the logs. Off: a placeholder (engine/privacy.py)."""
    trace_file: str = ""
    """Append latency trace events (JSON lines) here; read with `python -m engine trace FILE`. Empty: off."""


class RingSection(_Section):
    """[ring]: the shared-memory audio rings."""

    slots: Annotated[int, msgspec.Meta(ge=2, le=65536)] = 64
    """Frames per ring; a power of two. 64 x 20 ms = 1.28 s of audio."""
    frame_bytes: Annotated[int, msgspec.Meta(ge=64, le=65536)] = 1920
    """Largest frame payload: 20 ms of 48 kHz PCM16."""
    spin_us: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 50


class TransportSection(_Section):
    """[transport]: the HTTP and WebSocket side: where it listens, how it talks to Twilio, pacing, recordings."""

    host: str = "0.0.0.0"
    port: Port = 8080
    public_url: str = ""
    """https URL Twilio reaches this host at: Twilio signs every request over it, so with validate_signatures
    (the default) every Twilio request is refused until it is set. Request headers (Host, X-Forwarded-*) are
    never trusted for it."""
    validate_signatures: bool = True
    """Refuse webhooks without a valid X-Twilio-Signature. Only turn off on a trusted test network."""
    stream_secret: str = ""
    """Key that signs per-call stream tokens. Empty: a random one per engine run."""
    stream_token_ttl_s: Positive = 60.0
    """How long after the webhook answered a call its media stream may still connect (Twilio connects within a
    second or two). The line is held for the call until then, and a token opens one stream only."""
    inbound_rate: Literal[8000, 16000] = 16000
    """Caller audio's rate in the inbound rings; heard at 16 kHz either way (at 8000 the speech process resamples, at
    16000 the transport): the same CPU in all (bench/results/standing_inbound_rate.json)."""
    inbound_spill_s: Annotated[float, msgspec.Meta(ge=0, le=60)] = 5.0
    """Caller audio kept while a call's inbound ring is full (the speech process restarting takes longer than the
    ring holds), written to the ring once it has room: none is lost. 0: a full ring drops."""
    outbound_lead_ms: Annotated[int, msgspec.Meta(ge=40, le=2000)] = 200
    """How far ahead of real-time playback audio is sent to Twilio: small, so `clear` silences fast."""
    max_message_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1 << 20)] = 65536
    stream_idle_timeout_s: Positive = 10.0
    """A Media Stream that sends nothing for this long is dead (Twilio sends media every 20 ms; pings do not
    count)."""
    start_timeout_s: Positive = 10.0
    """A Media Stream must say `start` this long after its upgrade, or it is closed (1008); pings do not count."""
    request_timeout_s: Positive = 15.0
    """An HTTP connection must deliver a whole request within this long of opening or of its last answer, and a
    webhook its body within this long of its headers: a client that trickles bytes holds no socket for long."""
    max_connections: Annotated[int, msgspec.Meta(ge=1)] = 512
    """Open TCP connections at most (calls, webhooks, /health); more are closed at accept, with a log line."""
    max_unstarted_streams: Annotated[int, msgspec.Meta(ge=1)] = 32
    """Media Stream sockets past the upgrade that have not said `start` yet, at most; more are refused (503)."""
    send_timeout_s: Positive = 5.0
    """A send to a caller that cannot drain within this long ends that call: its network stopped reading."""
    send_buffer_bytes: Annotated[int, msgspec.Meta(ge=4096, le=1 << 24)] = 65536
    """Per Media Stream: the kernel's send buffer and the event loop's write buffer limit. About 4 s of audio,
    where the kernel's own tuning lets a socket nobody reads swallow minutes of it before a send blocks."""
    health_token: str = ""
    """/health answers loopback clients only; with a token set, also anyone sending `Authorization: Bearer
    <token>`."""
    recordings_dir: str = ""
    """Per-call WAV (both directions) + JSONL events go here; empty: no recording."""


class TwilioSection(_Section):
    """Credentials for the REST API (outbound calls) and webhook signatures.

    Also read from the standard TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and TWILIO_FROM_NUMBER.
    """

    account_sid: str = ""
    auth_token: str = ""
    from_number: str = ""
    api_url: str = ""
    """Twilio's REST API at another address (a regional endpoint such as https://api.dublin.ie1.twilio.com, or a
    proxy); empty: https://api.twilio.com."""


class SupervisorSection(_Section):
    """[supervisor]: start-up and heartbeat timeouts, draining, and how restarts back off."""

    ready_timeout_s: Positive = 120.0
    heartbeat_interval_s: Positive = 0.5
    heartbeat_timeout_s: Positive = 10.0
    drain_timeout_s: NonNegative = 10.0
    restart_backoff_first_s: NonNegative = 0.0
    """Delay before the first restart in a window: a crash is repaired at once."""
    restart_backoff_base_s: NonNegative = 0.5
    """Delay before the second restart in a window; each later one doubles it."""
    restart_backoff_max_s: NonNegative = 10.0
    restart_intensity: Annotated[int, msgspec.Meta(ge=1)] = 5
    """Restarts of one process allowed within `restart_window_s` before the engine gives up."""
    restart_window_s: Positive = 60.0


class SpeechSection(_Section):
    """[speech]: VAD and endpointing thresholds, and the Whisper model."""

    vad: Literal["silero"] = "silero"
    vad_threshold: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 0.5
    """A VAD window at or above this speech probability is speech."""
    vad_hysteresis: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.15
    """A window counts as silence only below `vad_threshold - vad_hysteresis`; in between, nothing changes."""
    min_speech_ms: Annotated[int, msgspec.Meta(ge=0, le=2000)] = 64
    """Speech shorter than this never starts a turn (clicks, coughs)."""
    pause_ms: Annotated[int, msgspec.Meta(ge=0, le=5000)] = 150
    """Silence after which transcription starts speculatively (and, once it is ready, the reply)."""
    solo_pause_ms: Annotated[int, msgspec.Meta(ge=0, le=5000)] = 64
    """`pause_ms` while the call is the only one the speech process hears: an idle box spends on speculative work
    to answer sooner (one call: v2v p50 798 vs 850 ms, bench/results/e2e_pause64.json; three callers at 64: p95 1786
    vs 1326 ms, hence only alone). Set it to `pause_ms` to turn it off."""
    end_silence_ms: Annotated[int, msgspec.Meta(ge=100, le=10000)] = 500
    """Silence that ends the caller's turn."""
    turn_model: Literal["smart-turn", "off"] = "off"
    """Also judge each pause with Smart Turn v3.2 (`pipecat-ai`'s bundled ONNX file): a turn that sounds and reads
    finished ends at once. Off by default: on the phone-path test speech it scores sentences cut mid-way as
    finished as whole ones (bench/turn.py), so it would cut callers off. Either way a pause whose transcript does
    not read as a finished sentence waits up to `turn_incomplete_ms`."""
    turn_complete_threshold: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 0.5
    """A pause ends the turn at once when Smart Turn scores it at least this complete and its transcript ends a
    sentence (. ? !); calibrated on phone-path speech by bench/turn.py."""
    turn_incomplete_ms: Annotated[int, msgspec.Meta(ge=100, le=10000)] = 1000
    """Silence a pause judged unfinished (its transcript does not end a sentence, or ends on a word such as "for";
    or its Smart Turn score is below the threshold) may last before the turn ends anyway."""
    caller_pause_margin_ms: Annotated[int, msgspec.Meta(ge=0, le=5000)] = 200
    """A caller who talked on after a silence (one that no judgement had lengthened, or right after their turn was
    taken as over) pauses that long mid-thought: their turns then end only after their longest such silence plus
    this, between `end_silence_ms` and `turn_incomplete_ms` (bench/e2e.py's paused sentences). 0: off."""
    prefix_pad_ms: Annotated[int, msgspec.Meta(ge=0, le=2000)] = 200
    suffix_pad_ms: Annotated[int, msgspec.Meta(ge=0, le=2000)] = 150
    """Audio after the silence began that Whisper gets too: weak last sounds ("coins", "quickly") fade below the
    VAD before they end (bench/endings.py). Already heard when a pause is judged, so it costs no waiting."""
    max_turn_s: Annotated[float, msgspec.Meta(ge=1, le=120)] = 30.0
    stt_model: str = "tiny.en"
    """`tiny.en` (bundled), `base` (bundled, two parts), or a CTranslate2 model directory."""
    stt_device: Literal["cpu", "cuda"] = "cpu"
    stt_compute_type: str = "int8"
    stt_threads: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    stt_pad_s: Annotated[float, msgspec.Meta(ge=0.5, le=30)] = 4.0
    """Silence after the utterance in the window Whisper encodes (without it the decoder does not stop)."""
    stt_min_window_s: Annotated[float, msgspec.Meta(ge=1, le=30)] = 8.0
    """The shortest window Whisper encodes; 30 = every utterance padded to 30 s, as faster-whisper does (slow)."""
    stt_beam_size: Annotated[int, msgspec.Meta(ge=1, le=10)] = 2
    """Whisper's beam (1: greedy). tiny.en, bench/wer.py's phone path, 3 runs (bench/results/wer_beams*.json): Piper's
    voice 57 edits in 1017 words with 2, 71 greedy, 45 with 3; espeak-ng 131, 141, 145. 2 costs ~30 ms (p50)."""
    stt_batch: Annotated[int, msgspec.Meta(ge=1, le=64)] = 8
    """Most utterances (different calls' turns ready together) transcribed in one Whisper batch."""
    vad_tick_ms: Annotated[int, msgspec.Meta(ge=0, le=100)] = 32
    """With calls live together the speech process wakes this often, not per frame, and runs all calls' VAD windows
    in one inference: a run on a wake-up costs ~4x a warm one (Silero: 405 us, 3 windows 560 us; back to back 84 us).
    3 silent callers: 9.4 vs 15.5 % of a core (standing_vad_tick.json). A call alone is heard per frame: the tick
    cost it v2v p50 +23, p95 +78 ms (e2e_vad_tick_solo.json). 0: always per frame."""
    model_cache_dir: str = "~/.cache/voice-engine"
    """Where models assembled at first use (Whisper base) are kept."""


class LlmSection(_Section):
    """[llm]: the model backend, its prompt and its generation settings."""

    backend: Literal["llamacpp", "vllm", "openai", "echo"] = "llamacpp"
    """`echo` is no model: a deterministic test backend that says back what it was given."""
    model: str = "smollm2-135m"
    """llamacpp: `smollm2-135m` (bundled) or a .gguf path. vllm: a local HF model directory.
    openai: the served model's name."""
    base_url: str = ""
    """For the openai backend: the server's /v1 URL."""
    api_key: str = ""
    system_prompt: str = ("You are a friendly, concise voice assistant on a phone call. Answer in one or two "
                          "short spoken sentences. No lists, no markdown, no emojis.")
    max_tokens: Annotated[int, msgspec.Meta(ge=8, le=4096)] = 80
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] = 0.6
    threads: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    """llamacpp: compute threads. 1 on a small box: with 2, ggml's threads spin-wait for each other while speech and
    TTS hold the cores (3 callers: 4.2-5.0 CPU s an answer with 2 threads, 3.1 with 1; one caller as fast)."""
    prefill_threads: Annotated[int, msgspec.Meta(ge=0, le=64)] = 0
    """llamacpp: threads for a batch of more than one token; 0: as many as `threads`. More costs under load: 3-4
    callers, 2 vs 1, v2v p95 +200 ms, llm CPU +9-16% (bench/results/soak_capacity_prefill_threads.json)."""
    solo_prefill_threads: Annotated[int, msgspec.Meta(ge=0, le=64)] = 2
    """llamacpp: a call that begins while no other call is live gets a context of its own (kept when others join),
    its batches on this many threads (2 vs 1: v2v p50 874 vs 982 ms, e2e_prefill_threads2.json). 0: none."""
    slots: Annotated[int, msgspec.Meta(ge=1, le=256)] = 4
    """Calls whose replies are made at once, each with its own context kept warm (llama.cpp: a KV slot each, so a
    call's turn reads in only its new words; vllm, openai: requests in flight together). More live calls share."""
    prompt_cache_mib: Annotated[int, msgspec.Meta(ge=0, le=65536)] = 64
    """llamacpp: RAM for the KV of dialogues whose slot another call took, so such a call gets its KV back instead of
    reading its whole dialogue in again (bench/llm_prefill.py --shared); oldest dropped past the cap. 0: off."""
    context_per_call: Annotated[int, msgspec.Meta(ge=512, le=131072)] = 2048
    """llamacpp: tokens of context each slot holds (its KV memory: ~23 KB a token for SmolLM2-135M in f16)."""
    nice: Annotated[int, msgspec.Meta(ge=0, le=19)] = 5
    """How much lower the llm process's CPU priority is than the others': its later tokens are not urgent, the
    TTS's first audio, the VAD and the transport's pacing are (on a CPU host where they share cores)."""
    gpu_memory_utilization: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5
    """vllm: the fraction of GPU memory vLLM may take (weights + KV cache); the rest is speech's and TTS's."""
    max_model_len: Annotated[int, msgspec.Meta(ge=256)] = 4096
    """vllm: the longest context (dialogue) it will hold."""
    enforce_eager: bool = False
    """vllm: skip graph capture and compilation: a much faster start, a slower decode (tests, CPU)."""
    requantize: Literal["q4_0", "q8_0", "off"] = "q4_0"
    """llamacpp: a Q4_1 model (the bundled SmolLM2) runs from a copy in this encoding, made once in `model_cache_dir`
    (engine/gguf_q4.py; ggml has AVX2 kernels for Q4_0 and Q8_0, none for Q4_1; see bench/q4_0.py)."""
    model_cache_dir: str = "~/.cache/voice-engine"
    """llamacpp: where the re-encoded copy (`requantize`) is made."""
    first_clause_words: Annotated[int, msgspec.Meta(ge=1, le=50)] = 3
    """The first speakable piece may end at a comma once it has this many words, or with no comma, before a
    conjunction or preposition after this many words (up to five): the voice starts that much sooner."""
    yield_to_first_pieces: bool = True
    """llamacpp: a reply past its first piece pauses while another reply makes its first (engine/first_pieces.py)."""
    max_sentences: Annotated[int, msgspec.Meta(ge=0, le=100)] = 2
    """A reply ends after this many sentences, as the prompt asks (a small model rambles); what it had begun of the
    next is dropped, as it is at `max_tokens`. 0: no limit but `max_tokens`."""


class TtsSection(_Section):
    """[tts]: the voice backend."""

    backend: Literal["piper", "csm", "espeak"] = "piper"
    voice: str = "en_US-joe-medium"
    """piper: `en_US-joe-medium` (bundled) or a .onnx path. csm: the local directory of sesame/csm-1b."""
    device: Literal["cpu", "cuda"] = "cpu"
    """csm only: where the model runs (on cuda, on this process's own CUDA stream)."""
    stream: bool = True
    """piper: split the voice at its vocoder and decode in chunks (first audio in tens of ms); off: Piper's own
    whole-sentence synthesis."""
    stream_ramp: bool = True
    """piper, streaming: after the first 186 ms, each chunk twice the one before (up to 1.5 s); off: 1.5 s chunks,
    whose ~150 ms decode stalls busy callers 186 ms into replies (engine/piper_stream.chunks, bench/piper_chunks.py)."""
    model_cache_dir: str = "~/.cache/voice-engine"
    """Where the streaming split of a Piper voice is made, once."""
    line_cache_mb: Annotated[float, msgspec.Meta(ge=0, le=4096)] = 8.0
    """The audio of fixed lines (greeting, re-prompt, goodbye...) is kept once made, up to this much (8 MB: about
    three minutes of Piper's 22 kHz voice), so later calls get it with no synthesis (engine/line_cache.py). 0: off."""


class ConversationSection(_Section):
    """What the conductor (engine/conductor.py) does with each call."""

    greeting: str = "Hello! How can I help you today?"
    """Said when a call connects (empty: wait for the caller)."""
    barge_in_min_speech_ms: Annotated[int, msgspec.Meta(ge=0, le=5000)] = 0
    """Caller speech must last this long to interrupt the bot. At most speech.min_speech_ms: the first speech
    detected interrupts. Longer lets "mm-hm" and coughs pass; what is said then is taken as a backchannel."""
    speculative_reply: bool = True
    """Start the reply on the transcript made at the caller's first pause, its audio held until the turn is over:
    kept if the turn ends as transcribed, dropped (never heard, never in the dialogue) if the caller goes on."""
    idle_reprompt_s: Annotated[float, msgspec.Meta(gt=0)] = 8.0
    reprompt: str = "Are you still there?"
    max_reprompts: Annotated[int, msgspec.Meta(ge=0)] = 2
    goodbye: str = "It seems you have gone quiet, so I will hang up now. Goodbye!"
    """Said before hanging up on a caller silent through every re-prompt."""
    max_call_s: Annotated[float, msgspec.Meta(gt=0)] = 600.0
    time_limit: str = "We have reached the time limit for this call. Thank you for calling, goodbye!"
    reply_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    """A reply with no audio this long after it was asked for is given up on, and the caller hears `apology`."""
    apology: str = "Sorry, I ran into a problem there. Could you say that again?"
    missed: str = "Sorry, I missed what you said. Could you say it again?"
    """Said when the speech process restarts while the caller is talking."""
    dtmf_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 2.0
    """Keypresses are collected until '#' or this long without another, then given to the LLM."""
    ending_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 20.0
    """A last line that has not finished playing by then does not hold the line open."""
    end_webhook: str = ""
    """When a call ends, its transcript (the transcript.json written beside its recording) is POSTed here as JSON,
    signed with `end_webhook_secret` (README: "After a call"). Empty: off. Delivery never holds up a call."""
    end_webhook_secret: str = ""
    """HMAC-SHA256 key of the `X-Engine-Signature` header on each end-of-call POST; needed with `end_webhook`."""
    end_webhook_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 5.0
    """One delivery attempt's limit, connecting to the last byte of the answer."""
    end_webhook_attempts: Annotated[int, msgspec.Meta(ge=1, le=10)] = 4
    """Attempts at most (the waits between them 1, 2, 4... s): a 2xx answer or a 4xx other than 408/429 ends them."""
    transfer_to: str = ""
    """Where a caller who asks for a person is put through (Twilio `<Dial>`): an E.164 number or a sip: URI.
    Empty: no hand-off; a caller who asks hears `transfer_unavailable`."""
    transfer_digit: Annotated[str, msgspec.Meta(pattern=r"^[0-9*]?$")] = "0"
    """The keypad key that asks for a person, pressed alone (then '#', or `dtmf_timeout_s` without another key): a
    number keyed in that starts with it is a number. Empty: no key."""
    transfer_phrases: list[str] = msgspec.field(default_factory=lambda: [
        "speak to a person", "talk to a person", "speak to a human", "talk to a human", "real person",
        "speak to someone", "talk to someone", "an agent", "a representative", "the operator"])
    """Words in what the caller says that ask for a person (matched ignoring case and punctuation)."""
    transfer_line: str = "Connecting you to a person now. Please hold."
    """Said before the call is put through."""
    transfer_unavailable: str = "Sorry, there is nobody I can put you through to on this line, but I can keep helping."
    transfer_failed: str = "Sorry, I could not put you through just now. Can I help with anything else?"
    tick_s: Annotated[float, msgspec.Meta(gt=0, le=5)] = 0.1
    """How often the transport gives every call's conductor the time (timeouts, re-prompts)."""
    machine_detection: bool = True
    """Calls placed with `python -m engine call` ask Twilio who answered (answering-machine detection, async,
    DetectMessageEnd). Until it says, nothing is said and nothing answered; a person (or `unknown`) then hears
    the greeting, a machine `voicemail_message` after its beep, a fax a hang-up. Inbound calls are not screened."""
    machine_detection_timeout_s: Annotated[int, msgspec.Meta(ge=3, le=59)] = 30
    """How long Twilio listens before it answers `unknown` (its MachineDetectionTimeout). With no answer by then
    (and a few seconds' margin), the call goes on as with a person."""
    voicemail_message: str = ("Hello, this is an automated call. Sorry we missed you; please call us back when "
                              "you can. Goodbye!")
    """Left on an answering machine after its beep, verbatim (without the LLM); then the call ends. It must play
    within `ending_timeout_s`. Empty: hang up on a machine without a word."""


class MemorySection(_Section):
    """[memory]: what the engine remembers of each caller between calls (engine/memory.py)."""

    enabled: bool = False
    """Keep each caller's heard-only dialogue (their words, and what they heard of the replies) and give its
    latest turns to the model in that number's next call. `python -m engine forget NUMBER` deletes a caller's."""
    path: str = "~/.local/share/voice-engine/memory.sqlite3"
    """The SQLite database (WAL mode), private to this user."""
    max_turns: Annotated[int, msgspec.Meta(ge=1, le=200)] = 12
    """The latest turns of earlier calls a new call starts with."""
    retention_days: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    """A call's turns are deleted this long after it ended."""


class PlaygroundSection(_Section):
    """[playground]: talk to the engine from a browser, without a phone (procs/playground.py)."""

    enabled: bool = False
    """Serve the page at /playground/ and take calls from it (off: those paths do not exist)."""
    secret: str = ""
    """Empty: loopback clients only. Set: anyone presenting it too (open /playground/#key=<secret>)."""
    token_ttl_s: Annotated[float, msgspec.Meta(gt=0, le=600)] = 60.0
    """How long a line the page asked for may take to start its stream."""


class FaultsSection(_Section):
    """Deliberate faults, for testing the supervisor. Leave empty in production."""

    crash_on_start: list[ProcName] = []
    hang_after_ready: list[ProcName] = []


class Config(_Section):
    """The whole configuration, one section per table of the TOML file."""

    engine: EngineSection = msgspec.field(default_factory=EngineSection)
    ring: RingSection = msgspec.field(default_factory=RingSection)
    transport: TransportSection = msgspec.field(default_factory=TransportSection)
    twilio: TwilioSection = msgspec.field(default_factory=TwilioSection)
    supervisor: SupervisorSection = msgspec.field(default_factory=SupervisorSection)
    speech: SpeechSection = msgspec.field(default_factory=SpeechSection)
    llm: LlmSection = msgspec.field(default_factory=LlmSection)
    conversation: ConversationSection = msgspec.field(default_factory=ConversationSection)
    tts: TtsSection = msgspec.field(default_factory=TtsSection)
    memory: MemorySection = msgspec.field(default_factory=MemorySection)
    playground: PlaygroundSection = msgspec.field(default_factory=PlaygroundSection)
    faults: FaultsSection = msgspec.field(default_factory=FaultsSection)

    @property
    def runtime_base(self) -> Path:
        return Path(self.engine.runtime_dir or tempfile.gettempdir())

    def to_bytes(self) -> bytes:
        return msgspec.msgpack.encode(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> Config:
        return msgspec.msgpack.decode(data, type=cls)
