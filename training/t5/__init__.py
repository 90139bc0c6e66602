"""T5 pretraining on captions: the run config, the caption tokenizer, span corruption and its
batches, the model and its evaluation, and the loop (`t5.loop.train_t5`)."""
