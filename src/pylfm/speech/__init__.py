"""Speech output: text-to-speech (`speak`) and speech-to-speech (`chat`) with LFM2.5-Audio.

    model = pylfm.Model("LFM2.5-Audio-1.5B-Q8_0.gguf", mmproj="mmproj-LFM2.5-Audio-1.5B-Q8_0.gguf")
    speech = model.speak("Hello there.", voice="UK male")      # .audio (24 kHz float32), .save("hi.wav")
    for chunk in model.speak("A longer text ...", stream=True): play(chunk)
    reply = model.chat("question.wav")                         # .text and .audio of the answer

The native engine (``_core.SpeechEngine``) runs on the model's loaded backbone: text
steps sample from the LM head; audio steps run the depthformer (8 codes per 80 ms
frame) and the audio detokenizer, whose spectrogram rows arrive here frame by frame.
This package turns them into a waveform and holds the prompts and the result type:

- `pylfm.speech.voices`: the voices, system prompts and sampling defaults;
- `pylfm.speech.istft`: the inverse STFT of liquid-audio's detokenizer, in NumPy,
  fed a few frames at a time (the output rate and frame constants);
- `pylfm.speech.result`: `Speech` (with ``save``) and `SpeechChunk`;
- `pylfm.speech.audio_file`: encoding audio as wav/flac/mp3/opus/pcm;
- `pylfm.speech.generate`: `speak` and `chat`, run on a model's
  `pylfm.engine.speech.SpeechRuntime`.

The speech GGUFs (``vocoder-*.gguf``, ``tokenizer-*.gguf``) are found next to the
model (or in its hub repository), or passed to `Model.load_speech`.
"""
