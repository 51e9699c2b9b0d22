"""The demo task: a seeded clinic database (``clinic``), question templates with canonical SQL
(``questions``) and the leak-free train/eval files built from them (``dataset``)."""
