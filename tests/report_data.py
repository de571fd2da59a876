"""The reports the report stage and the CLI tables read, as the evaluate and transfer stages
write them: shared by tests/test_report.py and tests/test_tables.py."""

EVALUATE = {
    "invp/epoch": 3,
    "invp/knn_clean/embeddings/k200/top1": 0.81234,
    "invp/knn_clean/embeddings/k20/top1": 0.5,
    "invp/knn_clean/features/k200/top1": 0.7988,
    "invp/knn_clean/features/k20/top1": 0.5,
    "invp/knn_bank/k200/top1": 0.80451,
    "invp/knn_bank/k20/top1": 0.5,
    "invp/linear/top1": 0.8567,
    "random_init/knn_clean/embeddings/k200/top1": 0.3012,
    "random_init/knn_clean/features/k200/top1": 0.4049,
    "random_init/linear/top1": 0.45,
    "pixels/knn/k200/top1": 0.7777,
    "pixels/linear/top1": 0.8,
    "instance_discrimination/status": "not run (evaluate.baselines.instance_discrimination is off)",
    "evaluate/seconds": 12.345,
    "evaluate/device": "cpu",
    "evaluate/num_classes": 10,
    "evaluate/train_images": 120,
    "evaluate/test_images": 60,
}
TRANSFER = {  # the keys invprop/stages/transfer.py writes
    "semi/10pct/finetune/top1": 0.9012,
    "semi/10pct/labels": 12,
    "semi/1pct/finetune/top1": 0.6543,
    "semi/dataset": "digits",
    "transfer/digits/linear/top1": 0.9234,
    "transfer/digits/linear/top5": 0.99,
    "transfer/digits/finetune/top1": 0.9555,
    "transfer/digits/train_images": 1437,
    "random_init/semi/1pct/finetune/top1": 0.2001,
    "random_init/transfer/digits/linear/top1": 0.5,
    "transfer/seconds": 7.0,
}
