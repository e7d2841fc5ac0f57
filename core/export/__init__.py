"""Export: a run (or a transformers folder) to GGUF within a known memory budget, verified.

  config     ExportConfig and the one table of quant types (QUANT_TABLE)
  gguf       the job: plan, launch, main (merge → convert → quantize → verify), push
  sources    what an export starts from (a run's adapter or checkpoint, or a model folder)
  preflight  memory/disk/time of each step before anything runs, and cheaper alternatives
  merge      LoRA merged into the base tensor by tensor (16-bit safetensors)
  convert    llama.cpp's own converter and llama_model_quantize
  verify     each GGUF against the merged model on fixed prompts
"""
