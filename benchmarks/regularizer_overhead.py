"""Training-step overhead of the emoreg regulariser, measured against plain steps in the same run.

    python benchmarks/regularizer_overhead.py                       # CPU, embedded SmolLM2-135M
    python benchmarks/regularizer_overhead.py --model random-1b --device cuda --dtype bfloat16 \
        --batch-size 4 --seq-len 2048                                # GPU, random-initialised 1.1B Llama

Alternates blocks of ``--steps`` training steps (forward, backward, AdamW step) without and
with the regulariser attached (penalty on 24 emotions at every layer, or ablation), for
``--rounds`` rounds, and prints the median step time of each, their ratio and, on CUDA, the
peak-memory ratio. The penalty uses the same autograd injection as the trainer callback.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from emoreg import EmotionVectors
from emoreg.models.layout import hidden_size, num_layers
from emoreg.regularization import Regularizer, RegularizerConfig


def build_model(name: str, dtype: torch.dtype, device: str):
    if name == "random-1b":
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                             num_key_value_heads=4, vocab_size=32000, max_position_embeddings=4096)
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).to(device=device, dtype=dtype)
        return model, None
    from emoreg.models.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(name, dtype=dtype, device=device)
    return model, tokenizer


def random_bundle(model, emotions: int) -> EmotionVectors:
    layers = list(range(num_layers(model)))
    directions = torch.randn(len(layers), emotions, hidden_size(model), generator=torch.Generator().manual_seed(0))
    names = [f"e{i}" for i in range(emotions)]
    return EmotionVectors.from_tensors(directions, names, layers, stats_mean=torch.zeros(len(layers), emotions),
                                       stats_std=torch.ones(len(layers), emotions),
                                       stats_percentiles=torch.linspace(-2, 2, 7).repeat(len(layers), emotions, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="'default', a model path, or 'random-1b'")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--mode", default="penalty", choices=["penalty", "ablate"])
    parser.add_argument("--emotions", type=int, default=24, help="how many emotions to regularise")
    parser.add_argument("--layers", default="all", help="'all' or a comma-separated list of layers")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=1, help="steps per block (blocks alternate)")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    args = parser.parse_args()

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    model, _ = build_model(args.model, dtype, args.device)
    model.train()
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    vectors = (EmotionVectors.from_pretrained("default") if args.model == "default"
               else random_bundle(model, args.emotions))
    emotions = vectors.emotions[: args.emotions]
    mode = {"mode": args.mode} if args.mode == "penalty" else {"mode": "ablate", "ablate_to": "zero"}
    layers = list(range(num_layers(model))) if args.layers == "all" else [int(x) for x in args.layers.split(",")]
    config = RegularizerConfig(emotions={e: 1.0 for e in emotions}, kind="hinge", coef=0.1, layers=layers, **mode)
    regularizer = Regularizer(model, vectors, config, inject="autograd")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=args.device.startswith("cuda"))
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, vocab, (args.batch_size, args.seq_len), generator=generator).to(args.device)
    attention_mask = torch.ones_like(input_ids)
    cuda = args.device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def block(steps: int) -> list[float]:
        times = []
        for _ in range(steps):
            sync()
            start = time.perf_counter()
            loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sync()
            times.append(time.perf_counter() - start)
        return times

    block(2)  # warm-up (allocator, kernels)
    with regularizer:
        block(1)
    plain, hooked, plain_mem, hooked_mem = [], [], [], []
    for _ in range(args.rounds):
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        plain += block(args.steps)
        if cuda:
            plain_mem.append(torch.cuda.max_memory_allocated())
            torch.cuda.reset_peak_memory_stats()
        with regularizer:
            hooked += block(args.steps)
        if cuda:
            hooked_mem.append(torch.cuda.max_memory_allocated())
    p, h = statistics.median(plain), statistics.median(hooked)
    device_name = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"model {args.model}, {device_name}, {args.dtype}, batch {args.batch_size} x {args.seq_len}, "
          f"mode {args.mode}, {len(emotions)} emotions x {len(layers)} layers"
          f"{', gradient checkpointing' if args.gradient_checkpointing else ''}")
    print(f"plain step     : {p * 1000:9.1f} ms (median of {len(plain)})")
    print(f"with emoreg    : {h * 1000:9.1f} ms (median of {len(hooked)})")
    print(f"time ratio     : {h / p:.4f} ({h / p - 1:+.2%})")
    if cuda:
        print(f"peak mem ratio : {max(hooked_mem) / max(plain_mem):.4f}")


if __name__ == "__main__":
    main()
