"""Transfer a pretrained text encoder to your own text classification task.

    accelerate launch recipes/text.py                                      # embedded Rotten Tomatoes sample
    accelerate launch recipes/text.py my_text.yaml --num_train_epochs 5    # a YAML of flags, as recipes/configs/*.yaml
    python recipes/text.py --model_name_or_path zoo:all-MiniLM-L6-v2 --train_file train.csv \\
        --validation_file test.csv --text_column_names review --label_column_name sentiment

Same lesson, same library as `recipes/image.py`: a new head for your labels, the frozen base's features cached for
the head stage, then fine-tuning at a lower rate; texts are padded per batch, never to the maximum. Two columns in
`--text_column_names a,b` make sentence pairs. Every `TrainingArguments` flag works; see --help.
"""

from hftransfer.fastpath import fast_start

if __name__ == "__main__":
    with fast_start():  # first: the allocator setting is read at start-up; the imports are 2 s faster (fastpath.py)
        from hftransfer.recipe import main

    main("text")
