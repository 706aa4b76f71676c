"""`pathgen eval` and `pathgen qc` end to end: files written, values, exit codes, one-line errors."""

import csv
import json

import numpy as np
import pytest
import scipy.io
import tifffile
import torch
from PIL import Image

from pathgen.cli import main
from pathgen.io.annotations import write_geojson
from pathgen.metrics import instance_scores, mpq_pannuke, mpq_plus_conic

from _slow_reference import random_touching_maps

torch.set_num_threads(1)


@pytest.fixture()
def label_folders(tmp_path):
    """Four images in four formats per side, paired by stem (extensions differ between the folders)."""
    rng = np.random.default_rng(7)
    maps = [random_touching_maps(rng, shape=(48, 40), n=10) for _ in range(4)]
    t_dir, p_dir = tmp_path / "true", tmp_path / "pred"
    t_dir.mkdir()
    p_dir.mkdir()
    (t0, p0), (t1, p1), (t2, p2), (t3, p3) = maps
    np.save(t_dir / "a.npy", t0)
    tifffile.imwrite(p_dir / "a.tif", p0.astype(np.int32))
    Image.fromarray(t1.astype(np.uint16)).save(t_dir / "b.png")
    np.save(p_dir / "b.npy", p1)
    ids = np.unique(t2)[1:]
    scipy.io.savemat(t_dir / "c.mat", {"inst_map": t2, "inst_type": np.ones((ids.size, 1))})
    scipy.io.savemat(p_dir / "c.mat", {"inst_map": p2.astype(np.int32)})
    write_geojson(t_dir / "d.geojson", t3)
    np.save(p_dir / "d.npy", p3)
    from pathgen.metrics import remap_label

    expected = [(t0, p0), (t1, p1), (t2, p2), (remap_label(t3), p3)]
    return t_dir, p_dir, expected


def test_eval_instances_folders_json_and_csv(label_folders, tmp_path, capsys):
    t_dir, p_dir, expected = label_folders
    out_json, out_csv = tmp_path / "scores.json", tmp_path / "scores.csv"
    rc = main(["eval", "instances", "--true", str(t_dir), "--pred", str(p_dir), "--json", str(out_json),
               "--csv", str(out_csv)])
    assert rc == 0
    result = json.loads(out_json.read_text())
    assert result["n_images"] == 4 and [r["name"] for r in result["per_image"]] == ["a", "b", "c", "d"]
    ref = [instance_scores(t, p) for t, p in expected]
    for key in ("dice1", "dice2", "aji", "aji_plus", "dq", "sq", "pq"):
        assert result[key] == pytest.approx(np.mean([r[key] for r in ref]), abs=1e-12), key
        assert result["n_undefined"][key] == 0
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["name"] for r in rows] == ["a", "b", "c", "d"]
    assert float(rows[2]["aji"]) == pytest.approx(ref[2]["aji"], abs=1e-12)
    assert "pq" in capsys.readouterr().out
    # Outputs are not replaced without --overwrite.
    rc = main(["eval", "instances", "--true", str(t_dir), "--pred", str(p_dir), "--json", str(out_json)])
    assert rc == 1 and "exists" in capsys.readouterr().err


def test_unpaired_file_is_named(label_folders, capsys):
    t_dir, p_dir, _ = label_folders
    np.save(p_dir / "zz_extra.npy", np.zeros((48, 40), np.int32))
    rc = main(["eval", "instances", "--true", str(t_dir), "--pred", str(p_dir)])
    err = capsys.readouterr().err
    assert rc == 1 and "zz_extra.npy" in err and len(err.strip().splitlines()) == 1


def _conic_stack(rng, n=3):
    true, pred = [], []
    for _ in range(n):
        t, p = random_touching_maps(rng, shape=(40, 40), n=12)
        tc = np.zeros_like(t)
        pc = np.zeros_like(p)
        for i in np.unique(t)[1:]:
            tc[t == i] = rng.integers(1, 7)
        for i in np.unique(p)[1:]:
            pc[p == i] = rng.integers(1, 7)
        true.append(np.stack([t, tc], -1))
        pred.append(np.stack([p, pc], -1).astype(np.int32))
    return np.stack(true), np.stack(pred)


def test_eval_instances_conic_mode_with_classes(tmp_path):
    rng = np.random.default_rng(11)
    true, pred = _conic_stack(rng)
    np.save(tmp_path / "true.npy", true)
    np.save(tmp_path / "pred.npy", pred)
    out = tmp_path / "conic.json"
    rc = main(["eval", "instances", "--true", str(tmp_path / "true.npy"), "--pred", str(tmp_path / "pred.npy"),
               "--classes", "--mode", "conic", "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    ref = mpq_plus_conic(true, pred)
    assert result["mpq_plus"] == pytest.approx(ref.mpq_plus, abs=1e-12)
    assert result["per_class"]["epithelial"]["tp"] == ref.per_class["epithelial"].tp
    # Binary PQ per image uses CoNIC's convention (1e-6 in DQ too).
    pq0 = instance_scores(true[0, ..., 0], pred[0, ..., 0], convention="conic")["pq"]
    assert result["per_image"][0]["pq"] == pytest.approx(pq0, abs=1e-12)
    assert [r["name"] for r in result["per_image"]] == ["0", "1", "2"]
    assert 0 <= result["detection"]["f1"] <= 1 and "epithelial" in json.dumps(result["detection"])


def test_eval_instances_pannuke_mode_with_tissue(tmp_path):
    rng = np.random.default_rng(5)
    true, pred = _conic_stack(rng, n=4)
    from pathgen.metrics import to_pannuke_channels

    t_pn = np.stack([to_pannuke_channels(x[..., 0], np.minimum(x[..., 1], 5)) for x in true])
    p_pn = np.stack([to_pannuke_channels(x[..., 0], np.minimum(x[..., 1], 5)) for x in pred])
    np.save(tmp_path / "masks_true.npy", t_pn)
    np.save(tmp_path / "masks_pred.npy", p_pn)
    tissue = np.array(["Breast", "Colon", "Breast", "Colon"])
    np.save(tmp_path / "types.npy", tissue)
    out = tmp_path / "pannuke.json"
    rc = main(["eval", "instances", "--true", str(tmp_path / "masks_true.npy"), "--pred",
               str(tmp_path / "masks_pred.npy"), "--classes", "--mode", "pannuke", "--tissue",
               str(tmp_path / "types.npy"), "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    ref = mpq_pannuke(t_pn, p_pn, tissue)
    assert result["mpq"] == pytest.approx(ref.mpq, abs=1e-12)
    assert result["bpq"] == pytest.approx(ref.bpq, abs=1e-12)
    assert set(result["per_tissue"]) == {"Breast", "Colon"}
    assert "pq_neoplastic" in result["per_image"][0]


def test_classes_required_for_class_scores(tmp_path, capsys):
    np.save(tmp_path / "t.npy", np.ones((8, 8), np.int32))
    np.save(tmp_path / "p.npy", np.ones((8, 8), np.int32))
    rc = main(["eval", "instances", "--true", str(tmp_path / "t.npy"), "--pred", str(tmp_path / "p.npy"),
               "--classes"])
    assert rc == 1 and "class information" in capsys.readouterr().err


def test_eval_semantic(tmp_path):
    t = np.array([[1, 1, 0, 0], [2, 2, 0, 0]], np.uint8)
    p = np.array([[1, 0, 0, 0], [2, 2, 2, 0]], np.uint8)
    Image.fromarray(t).save(tmp_path / "t.png")
    Image.fromarray(p).save(tmp_path / "p.png")
    out = tmp_path / "sem.json"
    rc = main(["eval", "semantic", "--true", str(tmp_path / "t.png"), "--pred", str(tmp_path / "p.png"),
               "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    # Class 1: 2·1/(2+1) = 2/3; class 2: 2·2/(2+3) = 4/5; mean 11/15. Background excluded.
    assert result["classes"] == [1, 2] and result["include_background"] is False
    assert result["dice"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert result["per_class"]["2"]["iou"] == pytest.approx(2 / 3)


def test_eval_fid_records_extractor(tmp_path):
    from safetensors.torch import save_file

    from pathgen.io.checkpoint import sha256_file
    from pathgen.metrics.fid import InceptionV3Pool3

    torch.manual_seed(0)
    weights = tmp_path / "fid_inception.safetensors"
    save_file(InceptionV3Pool3().state_dict(), str(weights))
    for name, seeds in (("a", (1, 2)), ("b", (3, 4))):
        (tmp_path / name).mkdir()
        for s in seeds:
            img = (np.random.default_rng(s).random((20, 24, 3)) * 255).astype(np.uint8)
            Image.fromarray(img).save(tmp_path / name / f"{s}.png")
    out = tmp_path / "fid.json"
    rc = main(["eval", "fid", str(tmp_path / "a"), str(tmp_path / "b"), "--weights", str(weights),
               "--json", str(out), "--kid-subsets", "3", "--quiet"])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["fid"] is not None and result["fid"] >= -1e-6
    assert (result["n_images_a"], result["n_images_b"], result["kid_subset_size"], result["kid_subsets"]) == \
        (2, 2, 2, 3)
    assert result["extractor"]["weights_sha256"] == sha256_file(weights)
    assert "299x299" in result["extractor"]["resize"]


def test_eval_fid_missing_weights(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    rc = main(["eval", "fid", str(tmp_path / "a"), str(tmp_path / "a"), "--weights", str(tmp_path / "no.pth")])
    assert rc == 1 and "no such file" in capsys.readouterr().err


def test_qc_commands(tmp_path, capsys):
    rng = np.random.default_rng(3)
    a = (rng.random((24, 24, 3)) * 255).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(a).save(tmp_path / "same.png")
    b = np.clip(a.astype(int) + 20, 0, 255).astype(np.uint8)
    Image.fromarray(b).save(tmp_path / "b.png")
    assert main(["qc", "ssim", str(tmp_path / "a.png"), str(tmp_path / "same.png"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["ssim"] == pytest.approx(1.0) and res["ssim_std"] == 0.0 and res["n_pairs"] == 1
    assert main(["qc", "psnr", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    from pathgen.metrics import psnr

    assert res["psnr"] == pytest.approx(psnr(a, b))
    m1 = np.zeros((6, 6), np.uint8)
    m1[:3] = 255
    m2 = np.zeros((6, 6), np.uint8)
    m2[:, :3] = 255
    Image.fromarray(m1).save(tmp_path / "m1.png")
    Image.fromarray(m2).save(tmp_path / "m2.png")
    out = tmp_path / "dice.json"
    assert main(["qc", "dice", str(tmp_path / "m1.png"), str(tmp_path / "m2.png"), "--out", str(out)]) == 0
    assert "dice 0.5000" in capsys.readouterr().out  # 2·9 / (18 + 18)
    assert json.loads(out.read_text())["dice"] == 0.5


def test_qc_folders_pair_by_name(tmp_path, capsys):
    for d in ("x", "y"):
        (tmp_path / d).mkdir()
    rng = np.random.default_rng(4)
    for name in ("p1", "p2"):
        img = (rng.random((16, 16, 3)) * 255).astype(np.uint8)
        Image.fromarray(img).save(tmp_path / "x" / f"{name}.png")
        Image.fromarray(255 - img).save(tmp_path / "y" / f"{name}.png")
    assert main(["qc", "ssim", str(tmp_path / "x"), str(tmp_path / "y"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n_pairs"] == 2 and [r["name"] for r in res["per_pair"]] == ["p1", "p2"]
    Image.fromarray(img).save(tmp_path / "y" / "p3.png")
    assert main(["qc", "ssim", str(tmp_path / "x"), str(tmp_path / "y")]) == 1
    assert "p3.png" in capsys.readouterr().err


def test_nuclei_datasets_with_images(tmp_path):
    from pathgen.io.labels import detect_format, read_nuclei_dataset

    rng = np.random.default_rng(9)
    # HoVer-Net / CoNSeP layout: Images/*.png (RGBA here) + Labels/*.mat with inst_map, inst_uid and inst_type.
    root = tmp_path / "consep"
    (root / "Images").mkdir(parents=True)
    (root / "Labels").mkdir()
    inst = np.array([[0, 5, 5], [2, 2, 0]], np.int32)
    Image.fromarray((rng.random((2, 3, 4)) * 255).astype(np.uint8)).save(root / "Images" / "train_1.png")
    # inst_uid lists instance 5 first: its type is 3, instance 2 has type 1.
    scipy.io.savemat(root / "Labels" / "train_1.mat", {"inst_map": inst, "inst_uid": np.array([[5], [2]]),
                                                       "inst_type": np.array([[3], [1]])})
    assert detect_format(root) == "hovernet-mat"
    (item,) = list(read_nuclei_dataset(root, "hovernet-mat"))
    assert item.name == "train_1" and item.image.shape == (2, 3, 3) and item.image.dtype == np.uint8
    np.testing.assert_array_equal(item.classes, [[0, 3, 3], [1, 1, 0]])
    # PanNuke fold: float64 images in 0..255 and 6-channel masks, in nested folders.
    fold = tmp_path / "Fold 1"
    (fold / "images" / "fold1").mkdir(parents=True)
    (fold / "masks" / "fold1").mkdir(parents=True)
    np.save(fold / "images" / "fold1" / "images.npy", rng.random((2, 4, 4, 3)) * 255)
    masks = np.zeros((2, 4, 4, 6))
    masks[0, 0:2, 0:2, 1] = 7  # one inflammatory nucleus in image 0
    np.save(fold / "masks" / "fold1" / "masks.npy", masks)
    assert detect_format(fold) == "pannuke"
    items = list(read_nuclei_dataset(fold, "pannuke"))
    assert [i.name for i in items] == ["0", "1"] and items[0].image.dtype == np.uint8
    assert items[0].instances[0, 0] == 1 and items[0].classes[0, 0] == 2 and not items[1].instances.any()
    # CoNIC: images.npy + labels.npy (N, H, W, 2).
    conic = tmp_path / "conic"
    conic.mkdir()
    np.save(conic / "images.npy", (rng.random((1, 4, 4, 3)) * 255).astype(np.uint8))
    lab = np.zeros((1, 4, 4, 2), np.int32)
    lab[0, 1:3, 1:3] = (4, 6)
    np.save(conic / "labels.npy", lab)
    assert detect_format(conic) == "conic"
    (c_item,) = list(read_nuclei_dataset(conic, "conic"))
    assert c_item.instances[1, 1] == 4 and c_item.classes[1, 1] == 6
    assert detect_format(tmp_path / "consep" / "Images") is None


def test_geojson_against_geojson_uses_a_common_extent(tmp_path):
    from pathgen.metrics.report import evaluate_instances

    true = np.zeros((10, 12), np.int32)
    true[1:4, 1:4] = 1
    true[6:9, 8:11] = 2
    pred = np.zeros((10, 12), np.int32)
    pred[1:4, 2:5] = 1  # IoU 6/12 = 0.5: not a match (strict >)
    write_geojson(tmp_path / "t.geojson", true)
    write_geojson(tmp_path / "p.geojson", pred)
    res = evaluate_instances(tmp_path / "t.geojson", tmp_path / "p.geojson")
    # Both files are rasterised on their common extent (9 x 11). Two true nuclei of 9 px, one predicted of 9 px
    # overlapping the first by 6 px (IoU 0.5, no match): TP 0, FP 1, FN 2; DICE1 = 2·6 / (18 + 9).
    row = res["per_image"][0]
    assert (row["tp"], row["fp"], row["fn"]) == (0, 1, 2)
    assert res["dice1"] == pytest.approx(2 * 6 / (18 + 9))
