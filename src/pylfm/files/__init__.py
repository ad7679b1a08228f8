"""Model files: finding them (`resolve`: local paths, environment variables, the Hugging
Face hub), looking into them (`inspect`: what a GGUF is, whether it is whole and
consistent), making them (`convert`: a liquid-audio checkpoint to GGUFs) and making
them smaller (`quantize`). Nothing here loads llama.cpp's libraries except
`quantize` of a text model."""
