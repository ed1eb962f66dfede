"""Regenerate the tiny demo assets: two synthetic data sets, a byte-level BPE tokenizer, a model config.

Everything here is written by this script from a fixed seed (no downloads, no copied data), so
running it again gives byte-identical files:

    python recipes/tiny/build_assets.py

data/instructions.jsonl  alpaca records (instruction / input / output) of a few toy skills a
                         model of 100k parameters learns within ~50 steps: sums, differences,
                         small products, spelling backwards, capital letters, counting letters,
                         first letters, sorting numbers and facts about invented animals.
data/chat.jsonl          `messages` records (system / user / assistant), a third multi-turn.
model/                   config.json of a 2-layer Llama (random init) plus tokenizer files that
                         `transformers.AutoTokenizer.from_pretrained` reads offline.
Needs only the `tokenizers` package.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
DATA_DIR = HERE / "data"
MODEL_DIR = HERE / "model"
SEED = 1234
INSTRUCTION_RECORDS = 480
CHAT_RECORDS = 100
VOCAB_SIZE = 768
MAX_POSITIONS = 512

WORDS = (
    "apple river stone garden window candle button pencil rabbit orange silver forest basket "
    "ladder marble pocket rocket summer winter yellow purple tunnel bridge castle dragon engine "
    "flower guitar hammer island jacket kettle lemon magnet needle ocean parrot pepper puzzle "
    "quiet rain salad shadow spoon table tiger tomato turtle umbrella violin wagon whale zebra "
    "cloud bread chair dance eagle feather giant honey"
).split()

# Invented animals with invented habits: facts no pretrained model could know.
CREATURES = {
    "zorbel": ("teal", "pebbles"),
    "quimble": ("orange", "moss"),
    "flarn": ("silver", "rain drops"),
    "tovik": ("purple", "acorns"),
    "brissel": ("yellow", "seaweed"),
    "mendrop": ("green", "candle wax"),
    "glavin": ("red", "old socks"),
    "yortle": ("blue", "clover"),
    "snepp": ("white", "pine cones"),
    "vashu": ("black", "honey"),
}

SYSTEM_PROMPTS = ("You are a helpful assistant.", "Answer briefly.", "You are a careful tutor. Give only the answer.")
Example = tuple[str, str, str]
"""(instruction, input, output)"""


# --- skills --------------------------------------------------------------------------------


def add(rng: random.Random) -> Example:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return f"What is {a} + {b}?", "", str(a + b)


def subtract(rng: random.Random) -> Example:
    a, b = sorted((rng.randint(0, 99), rng.randint(0, 99)), reverse=True)
    return f"What is {a} - {b}?", "", str(a - b)


def multiply(rng: random.Random) -> Example:
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    return f"What is {a} times {b}?", "", str(a * b)


def backwards(rng: random.Random) -> Example:
    word = rng.choice(WORDS)
    return "Spell the word backwards.", word, word[::-1]


def capitals(rng: random.Random) -> Example:
    text = " ".join(rng.sample(WORDS, rng.randint(1, 3)))
    return "Write the following in capital letters.", text, text.upper()


def count_letters(rng: random.Random) -> Example:
    word = rng.choice(WORDS)
    return f"How many letters are in the word '{word}'?", "", str(len(word))


def first_letter(rng: random.Random) -> Example:
    word = rng.choice(WORDS)
    return f"What is the first letter of '{word}'?", "", word[0]


def sort_numbers(rng: random.Random) -> Example:
    numbers = [rng.randint(0, 50) for _ in range(rng.randint(3, 5))]
    listed = ", ".join(map(str, numbers))
    return "Sort these numbers from smallest to largest.", listed, ", ".join(map(str, sorted(numbers)))


def creature_fact(rng: random.Random) -> Example:
    name = rng.choice(sorted(CREATURES))
    colour, food = CREATURES[name]
    if rng.random() < 0.5:
        return f"What colour is a {name}?", "", f"A {name} is {colour}."
    return f"What does a {name} eat?", "", f"A {name} eats {food}."


SKILLS: tuple[Callable[[random.Random], Example], ...] = (
    add,
    subtract,
    multiply,
    backwards,
    capitals,
    count_letters,
    first_letter,
    sort_numbers,
    creature_fact,
)


# --- data sets -----------------------------------------------------------------------------


def instruction_records(rng: random.Random, n: int) -> list[dict[str, str]]:
    """`n` alpaca records cycling through the skills."""
    records = []
    for i in range(n):
        instruction, inp, output = SKILLS[i % len(SKILLS)](rng)
        records.append({"instruction": instruction, "input": inp, "output": output})
    return records


def user_text(instruction: str, inp: str) -> str:
    return f"{instruction}\n{inp}" if inp else instruction


def chat_record(rng: random.Random) -> dict[str, list[dict[str, str]]]:
    """One conversation of 1-3 exchanges, sometimes with a system prompt."""
    messages = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if rng.random() < 0.4 else []
    turns = 1 if rng.random() < 0.65 else rng.randint(2, 3)
    for _ in range(turns):
        instruction, inp, output = rng.choice(SKILLS)(rng)
        messages.append({"role": "user", "content": user_text(instruction, inp)})
        messages.append({"role": "assistant", "content": output})
    return {"messages": messages}


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    path.write_text("".join(lines), encoding="utf-8")


# --- tokenizer and model -------------------------------------------------------------------

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% else %}{{ '\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
"""`<s><|user|>\\nQuestion\\n<|assistant|>\\nAnswer</s>`: one line of role marker per turn."""


def corpus(instructions: list[dict], chats: list[dict]) -> list[str]:
    texts = [user_text(r["instruction"], r["input"]) + "\n" + r["output"] for r in instructions]
    return texts + ["\n".join(m["content"] for m in c["messages"]) for c in chats]


def train_tokenizer(texts: list[str]):
    """A byte-level BPE over the shipped texts; `<s>` is prepended like Llama's tokenizer does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return tok


def tokenizer_config() -> dict:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "additional_special_tokens": SPECIAL_TOKENS[4:],
        "model_max_length": MAX_POSITIONS,
        "padding_side": "right",
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }


def model_config(tok) -> dict:
    """A 2-layer Llama of ~0.2M parameters; the recipe builds it with `init: random`."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": tok.get_vocab_size(),
        "hidden_size": 64,
        "intermediate_size": 192,  # a multiple of 64: bitsandbytes packs CPU 4-bit weights in blocks of 64
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": MAX_POSITIONS,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-06,
        "rope_theta": 10000.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": False,
        "bos_token_id": tok.token_to_id("<s>"),
        "eos_token_id": tok.token_to_id("</s>"),
        "pad_token_id": tok.token_to_id("<pad>"),
    }


def write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def main() -> None:
    rng = random.Random(SEED)
    instructions = instruction_records(rng, INSTRUCTION_RECORDS)
    chats = [chat_record(rng) for _ in range(CHAT_RECORDS)]
    write_jsonl(DATA_DIR / "instructions.jsonl", instructions)
    write_jsonl(DATA_DIR / "chat.jsonl", chats)
    tok = train_tokenizer(corpus(instructions, chats))
    MODEL_DIR.mkdir(parents=True, exist_ok=True)
    tok.save(str(MODEL_DIR / "tokenizer.json"))
    write_json(MODEL_DIR / "tokenizer_config.json", tokenizer_config())
    specials = {k: v for k, v in tokenizer_config().items() if k.endswith("_token") or k.startswith("additional")}
    write_json(MODEL_DIR / "special_tokens_map.json", specials)
    write_json(MODEL_DIR / "config.json", model_config(tok))
    print(f"wrote {len(instructions)} + {len(chats)} records, vocab {tok.get_vocab_size()} -> {HERE}")


if __name__ == "__main__":
    main()
