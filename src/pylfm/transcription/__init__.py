"""Transcription on top of the engine: what to ask (`options`: `TranscribeOptions`; the
repetition `loop_guard`), one recording on its way through the scheduler (`job`:
`TranscriptionJob`), what comes back (`results`: `Transcription`; `formats`: `Segment`
and the txt/json/srt/vtt writers)."""
