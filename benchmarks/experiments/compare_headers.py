"""Check that the prototype fast_headers.read_dicom_file returns exactly the package's records.

    python benchmarks/experiments/compare_headers.py

Compares every field of both FileRecords on: the trap-filled sample NAS (make_dicom_nas), pydicom's
bundled edge-case files, 2,000 bulk files, and crafted values (padding, NULs, multi-values, Latin-1,
IS variants) in explicit and implicit VR. Prints each difference and a count per corpus.
"""
import os, sys, shutil, tempfile, dataclasses
from pathlib import Path
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fast_headers
from pacs_assets.sources import dicom_headers
from pacs_assets.sample.dicom_nas import make_dicom_nas
import pydicom
def walk(root):
    for d,_,fs in os.walk(root):
        for f in fs:
            p=os.path.join(d,f)
            if os.path.islink(p) or not os.path.isfile(p): continue
            yield os.path.relpath(p,root)
def cmp(root, limit=None):
    n=diff=0
    for rel in list(walk(root))[:limit]:
        try: st=os.stat(os.path.join(root,rel))
        except OSError: continue
        a=dicom_headers.read_dicom_file("x",str(root),rel,st.st_size,st.st_mtime_ns)
        b=fast_headers.read_dicom_file("x",str(root),rel,st.st_size,st.st_mtime_ns)
        n+=1
        if a!=b:
            diff+=1
            da, db = dataclasses.asdict(a), dataclasses.asdict(b)
            print("DIFF", rel, {k:(da[k],db[k]) for k in da if da[k]!=db[k]})
    print(root, n, "files,", diff, "differences")
tmp=Path(tempfile.mkdtemp())
make_dicom_nas(tmp/"sample")
cmp(tmp/"sample")
cmp(Path(pydicom.__file__).parent/"data")
from pacs_assets.sample.dicom_nas import make_bulk_dicom_nas
make_bulk_dicom_nas(tmp/"bulk", 2000)
cmp(tmp/"bulk")
# crafted values
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.dataelem import DataElement
from pydicom import config
cases=[("PatientName","PN",["Doe^Jane ", "Doe^Jane^^^", " Doe", "Doe\x00", "Doe^J=Yamada", "A\\B", "Müller"]),
       ("PatientID","LO",[" 123 ", "12 3", "ABC\x00", " "]),
       ("Modality","CS",["CT ", " CT", "CT\\MR"]),
       ("InstanceNumber","IS",["1 ", " 2", "+3", "1.0", "007", "abc"]),
       ("SOPInstanceUID","UI",["1.2.3\x00", "1.2.3 ", " 1.2"]),
       ("StudyDate","DA",["20240101", "2024.01.01", "20240101 "]),]
(tmp/"craft").mkdir()
k=0
for kw,vr,vals in cases:
    for v in vals:
        ds=Dataset(); ds.SOPClassUID="1.2.840.10008.5.1.4.1.1.2"; ds.SOPInstanceUID=f"1.2.3.{k}"; ds.StudyInstanceUID="1.2"; ds.SeriesInstanceUID="1.3"
        if kw=="PatientName" and not v.isascii(): ds.SpecificCharacterSet="ISO_IR 100"
        raw=v.encode("latin-1")
        ph="Q"*len(raw) if vr!="IS" else "9"*len(raw)
        ds.add(DataElement(kw, vr, ph, validation_mode=config.IGNORE))
        for implicit in (False, True):
            m=FileMetaDataset(); m.MediaStorageSOPClassUID=ds.SOPClassUID; m.MediaStorageSOPInstanceUID=ds.SOPInstanceUID
            m.TransferSyntaxUID="1.2.840.10008.1.2" if implicit else "1.2.840.10008.1.2.1"; ds.file_meta=m
            out=tmp/"craft"/f"c{k}_{int(implicit)}.dcm"
            ds.save_as(out, enforce_file_format=True, implicit_vr=implicit, little_endian=True)
            b=out.read_bytes(); assert b.count(ph.encode())>=1; out.write_bytes(b.replace(ph.encode(), raw))
        k+=1
cmp(tmp/"craft")
shutil.rmtree(tmp, ignore_errors=True)
