"""Small data files for the lessons, reached through the package (see README.md in this folder).

Lessons 09-10: :mod:`bertnp.lesson_data.lessons_09_10`. Lessons 11-14:
:mod:`bertnp.lesson_data.lessons_11_14` (``load_l12``, ``l13_reference``, ``which_book``).
"""
