"""Transfer a pretrained image classifier to your own images.

    accelerate launch recipes/image.py                                     # embedded Fashion-MNIST sample
    accelerate launch recipes/image.py recipes/configs/image.yaml --num_train_epochs 5
    python recipes/image.py --model_name_or_path zoo:mobilenet_v2 --train_dir data/train --validation_dir data/val

The lesson, done by `hftransfer`: load the checkpoint with a new head for your labels, freeze its base and train the
head (on cached features), unfreeze and fine-tune at a lower learning rate, evaluate, save a folder that
`AutoModelForImageClassification.from_pretrained` loads. Every `TrainingArguments` flag works; see --help.
"""

from hftransfer.fastpath import fast_start

if __name__ == "__main__":
    with fast_start():  # first: the allocator setting is read at start-up; the imports are 2 s faster (fastpath.py)
        from hftransfer.recipe import main

    main("image")
