"""Semi-supervised subsets: SimCLR lists honoured exactly, seeded draws balanced and reproducible."""
from collections import Counter

import pytest

from pretrain.subsets import (SubsetError, balanced_subset, format_subset, parse_subset_line, read_subset_file,
                              subset_indices)

# An ImageFolder of 5 classes of unequal sizes, 200 images, as relative paths.
FILES = [f"n0{c}/n0{c}_{i}.JPEG" for c, count in enumerate((30, 30, 40, 60, 40)) for i in range(count)]


def test_simclr_lines_map_to_their_class_folder():
    assert parse_subset_line("n01440764_10026.JPEG") == "n01440764/n01440764_10026.JPEG"
    assert parse_subset_line("n01440764/n01440764_10026.JPEG") == "n01440764/n01440764_10026.JPEG"


def test_a_simclr_list_is_honoured_exactly(tmp_path):
    listed = ["n03_7.JPEG", "n00_3.JPEG", "n01_19.JPEG"]
    path = tmp_path / "1percent.txt"
    path.write_text("\n".join(listed) + "\n\n")  # a trailing blank line, as in SimCLR's files
    subset = read_subset_file(path)
    assert subset == ["n03/n03_7.JPEG", "n00/n00_3.JPEG", "n01/n01_19.JPEG"]
    indices = subset_indices(FILES, subset, path, "train")
    assert [FILES[i] for i in indices] == subset


def test_a_listed_image_missing_from_the_data_is_an_error_naming_it(tmp_path):
    path = tmp_path / "10percent.txt"
    path.write_text("n00_3.JPEG\nn02_99.JPEG\n")
    with pytest.raises(SubsetError, match=r"10percent.txt: 1 of 2 listed images are not in /data/train: n02/n02_99"):
        subset_indices(FILES, read_subset_file(path), path, "/data/train")


@pytest.mark.parametrize("text, message", [
    (None, "does not exist: pass SimCLR's 1percent.txt"),
    ("\n\n", "lists no images"),
    ("n00_1.JPEG\nn00_1.JPEG\n", r":2: 'n00_1.JPEG' repeats line 1"),
    ("n00/../n01_1.JPEG\n", "is not a file name"),
])
def test_unusable_subset_files_are_refused_with_the_file_named(tmp_path, text, message):
    path = tmp_path / "subset.txt"
    if text is not None:
        path.write_text(text)
    with pytest.raises(SubsetError, match=message) as error:
        read_subset_file(path)
    assert str(path) in str(error.value)


def test_the_drawn_subset_is_class_balanced_and_fixed_by_its_seed():
    subset = balanced_subset(FILES, percent=10, seed=3)
    # 10% of 200 images over 5 classes: 4 per class, whatever the class size.
    assert Counter(f.split("/")[0] for f in subset) == {f"n0{c}": 4 for c in range(5)}
    assert set(subset) <= set(FILES)
    assert balanced_subset(list(reversed(FILES)), percent=10, seed=3) == subset
    assert balanced_subset(FILES, percent=10, seed=4) != subset
    # At least one image per class, however small the percentage.
    assert len(balanced_subset(FILES, percent=1, seed=0)) == 5


def test_a_drawn_subset_round_trips_through_a_subset_file(tmp_path):
    subset = balanced_subset(FILES, percent=10, seed=0)
    path = tmp_path / "subset.txt"
    path.write_text(format_subset(subset))
    assert read_subset_file(path) == subset


def test_a_class_too_small_for_a_balanced_draw_is_named():
    files = FILES + ["n05/n05_0.JPEG"]
    with pytest.raises(SubsetError, match="class 'n05' has 1 training images"):
        balanced_subset(files, percent=10, seed=0)
