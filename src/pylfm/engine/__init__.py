"""Everything that talks to the native engine (``pylfm._core``, llama.cpp + libmtmd):
opening it (`native`), the device strings and their defaults (`device`), where weights
live on the CPU (`cpu_weights`: never the crashing AMX buffer type), the ChatML
prompt (`prompt`), llama.cpp's log (`log`), the one `scheduler` that feeds it, and
speech output on a loaded model (`speech`: `SpeechRuntime`). Nothing here knows a
transcription or a speech result type: jobs are duck-typed (see `scheduler`)."""
