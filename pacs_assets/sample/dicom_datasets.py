"""Building the sample's DICOM datasets: invented studies, phantom pixels, CT / MR / enhanced MR, encoding."""

from __future__ import annotations

import hashlib
import io
import uuid
from dataclasses import dataclass
from datetime import date

import numpy as np
import pydicom
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4.1"


def _uid(*parts: object) -> str:
    """A deterministic UUID-derived UID (PS3.5 B.2, root 2.25), always exactly 44 characters.

    pydicom's ``generate_uid(prefix=None, entropy_srcs=...)`` ignores the entropy and returns a random
    UUID, and with a prefix it makes a 64-character non-UUID number: neither fits, so derive it here.
    """
    raw = bytearray(hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=16).digest())
    raw[0] |= 0x80  # top bit set: the integer always has 39 digits, so every UID has the same length
    return f"2.25.{uuid.UUID(bytes=bytes(raw), version=4).int}"


@dataclass
class _Study:
    """One study as the generator plans it; ``study_date``/``series_date`` are written as is (None: absent)."""

    patient_id: str
    patient_name: str
    charset: str | list[str] | None
    sex: str
    birth_date: str
    folder: str  # "<PatientFolder>/<StudyFolder>"
    uid: str
    modality: str
    description: str
    accession: str
    real_date: date  # the day it really happened (file mtimes)
    study_date: str | None
    series_date: str | None


# (PatientName, SpecificCharacterSet, patient folder prefix); the first three are the charset cases.
_PATIENTS = [
    ("Müller^Jürgen", "ISO_IR 100", "Müller Jürgen"),  # Latin-1; folder has a space and umlauts
    ("Παπαδοπούλου^Ελένη", "ISO_IR 192", "PAPADOPOULOU_ELENI"),  # UTF-8 (Greek)
    ("Yamada^Tarou=山田^太郎=やまだ^たろう", ["", "ISO 2022 IR 87"], "YAMADA_TAROU"),  # PS3.5 H.3.1
    ("Doe^Jane", None, "DOE_JANE"),
    ("Smith^John^A", None, "SMITH_JOHN"),
    ("Okafor^Chidi", None, "OKAFOR_CHIDI"),
    ("Kowalski^Anna", None, "KOWALSKI_ANNA"),
    ("Nguyen^Van^Minh", None, "NGUYEN_VAN"),
]


def _phantom(rng: np.random.Generator, size: int, z: float, modality: str) -> np.ndarray:
    """A noisy cross-section: air, a body ellipse with a bony centre (CT stored values = HU + 1024)."""
    yy, xx = (np.mgrid[:size, :size] - (size - 1) / 2) / (size / 2)
    r = np.hypot(xx / (0.85 - abs(z) / 2000), yy / 0.65)
    if modality == "CT":
        hu = np.where(r < 1, 40.0, -1000.0)
        hu[(r > 0.85) & (r < 1)] = -100.0  # subcutaneous fat
        hu[np.hypot(xx, yy + 0.3) < 0.12] = 700.0  # spine
        values = hu + 1024 + rng.normal(0, 12, hu.shape)
    else:
        values = np.where(r < 1, 500 + 200 * np.cos(4 * r), 0) + np.abs(rng.normal(0, 8, r.shape))
    return np.clip(values, 0, 4095).astype(np.uint16)  # 12 bits stored


def _ds_text(value: float) -> str:
    return f"{value:.2f}"


def _dataset(st: _Study, series_uid: str, series_no: int, series_desc: str, inst_no: int,
             sop_uid: str, sop_class: str, pixels: np.ndarray) -> Dataset:
    """The patient/study/series/image modules shared by every instance; modality fields come after."""
    ds = Dataset()
    if st.charset:
        ds.SpecificCharacterSet = st.charset
    elif not (st.description.isascii() and st.patient_name.isascii()):
        # An ASCII patient's "Schädel nativ": without a character set the default repertoire has no "ä"
        # (dciodvfy calls it an error); Latin-1, as an older German modality writes it.
        ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    # Odd dates are written unvalidated: pydicom would warn about exactly what we want on disk.
    for keyword, value in (("StudyDate", st.study_date), ("SeriesDate", st.series_date),
                           ("AcquisitionDate", st.series_date), ("ContentDate", st.series_date)):
        if value is not None:
            ds.add(DataElement(keyword, "DA", value, validation_mode=config.IGNORE))
    series_time = f"08{30 + series_no % 30:02d}"
    ds.StudyTime, ds.SeriesTime, ds.ContentTime = "082955", f"{series_time}00", f"{series_time}{inst_no % 60:02d}"
    ds.AccessionNumber = st.accession
    ds.Modality = st.modality
    ds.Manufacturer = "SAMPLE MEDICAL"
    ds.InstitutionName = "Sample General Hospital"
    ds.ReferringPhysicianName = "Weber^Anna"
    ds.StudyDescription, ds.SeriesDescription = st.description, series_desc
    ds.PatientName, ds.PatientID = st.patient_name, st.patient_id
    ds.PatientBirthDate, ds.PatientSex = st.birth_date, st.sex
    ds.BodyPartExamined = "CHEST" if st.modality == "CT" else "HEAD"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = st.uid, series_uid
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber, ds.AcquisitionNumber = "1", series_no, inst_no, 1
    ds.FrameOfReferenceUID = _uid("for", series_uid)
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "HFS"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = (int(n) for n in pixels.shape[-2:])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    return ds


def _ct(ds: Dataset, z: float, thickness: float, spacing: float) -> Dataset:
    ds.KVP, ds.XRayTubeCurrent, ds.ExposureTime = "120", 210, 500
    ds.ConvolutionKernel, ds.ScanOptions = "B30f", "HELICAL MODE"
    ds.SliceThickness, ds.PixelSpacing = _ds_text(thickness), [_ds_text(spacing)] * 2
    ds.ImagePositionPatient = [_ds_text(-spacing * ds.Columns / 2), _ds_text(-spacing * ds.Rows / 2), _ds_text(z)]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.SliceLocation = _ds_text(z)
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    return ds


def _mr(ds: Dataset, z: float, thickness: float, spacing: float) -> Dataset:
    ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "SE", "SK", ""
    ds.MRAcquisitionType, ds.RepetitionTime, ds.EchoTime = "2D", "4000", "90"
    ds.MagneticFieldStrength, ds.ImagingFrequency, ds.EchoTrainLength = "1.5", "63.6", 15
    ds.SliceThickness, ds.SpacingBetweenSlices = _ds_text(thickness), _ds_text(thickness)
    ds.PixelSpacing = [_ds_text(spacing)] * 2
    ds.ImagePositionPatient = [_ds_text(-spacing * ds.Columns / 2), _ds_text(-spacing * ds.Rows / 2), _ds_text(z)]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.SliceLocation = _ds_text(z)
    return ds


def _item(**attributes) -> Sequence:
    """A sequence of one item holding ``attributes``."""
    item = Dataset()
    for keyword, value in attributes.items():
        setattr(item, keyword, value)
    return Sequence([item])


# The Enhanced MR IOD's image-level attributes (PS3.3 C.8.13.1, C.8.13.4, C.8.13.5, C.7.6.16, C.7.5.2) for a
# 3D T1 gradient-echo acquisition: enough for dciodvfy (dicom3tools) to find no error.
_ENHANCED_MR_IMAGE = dict(
    ManufacturerModelName="SAMPLE MR 1.5T", DeviceSerialNumber="0001", SoftwareVersions="1.0",
    PixelPresentation="MONOCHROME", VolumetricProperties="VOLUME", VolumeBasedCalculationTechnique="NONE",
    ComplexImageComponent="MAGNITUDE", AcquisitionContrast="T1", PresentationLUTShape="IDENTITY",
    BurnedInAnnotation="NO", LossyImageCompression="00", ContentQualification="PRODUCT", ResonantNucleus="1H",
    KSpaceFiltering="NONE", MagneticFieldStrength="1.5", ApplicableSafetyStandardAgency="IEC",
    AcquisitionDuration=120.0, PulseSequenceName="T1_3D_GRE", MRAcquisitionType="3D", EchoPulseSequence="GRADIENT",
    MultiPlanarExcitation="NO", PhaseContrast="NO", TimeOfFlightContrast="NO",
    SteadyStatePulseSequence="NONE", EchoPlanarPulseSequence="NO", SaturationRecovery="NO",
    SpectrallySelectedSuppression="NONE", OversamplingPhase="NONE", GeometryOfKSpaceTraversal="RECTILINEAR",
    SegmentedKSpaceTraversal="SINGLE", NumberOfKSpaceTrajectories=1, RectilinearPhaseEncodeReordering="LINEAR",
    CoverageOfKSpace="FULL", AcquisitionContextSequence=Sequence(),
)


def _enhanced_mr(ds: Dataset, frames: int, thickness: float, spacing: float) -> Dataset:
    """Turn a dataset holding ``frames`` frames into an Enhanced MR multi-frame instance (one stack)."""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.NumberOfFrames = frames
    for keyword, value in _ENHANCED_MR_IMAGE.items():
        setattr(ds, keyword, value)
    acquired = f"{ds.StudyDate}{ds.ContentTime}" if "StudyDate" in ds else None
    ds.AcquisitionDateTime = acquired
    # One stack, its frames ordered by their position in it: the dimensions say so (C.7.6.17).
    organization = _uid("dimensions", ds.SeriesInstanceUID)
    ds.DimensionOrganizationSequence = _item(DimensionOrganizationUID=organization)
    ds.DimensionIndexSequence = Sequence([
        _item(DimensionOrganizationUID=organization, DimensionIndexPointer=pointer,
              FunctionalGroupPointer=0x00209111)[0]  # Frame Content Sequence
        for pointer in (0x00209056, 0x00209057)])  # Stack ID, In-Stack Position Number
    shared = Dataset()
    shared.PixelMeasuresSequence = _item(PixelSpacing=[_ds_text(spacing)] * 2, SliceThickness=_ds_text(thickness))
    shared.PlaneOrientationSequence = _item(ImageOrientationPatient=["1", "0", "0", "0", "1", "0"])
    shared.MRImageFrameTypeSequence = _item(
        FrameType=list(ds.ImageType), PixelPresentation="MONOCHROME", VolumetricProperties="VOLUME",
        VolumeBasedCalculationTechnique="NONE", ComplexImageComponent="MAGNITUDE", AcquisitionContrast="T1")
    shared.MRTimingAndRelatedParametersSequence = _item(
        RepetitionTime=8.0, FlipAngle=12.0, EchoTrainLength=1, RFEchoTrainLength=0, GradientEchoTrainLength=1,
        SpecificAbsorptionRateSequence=_item(SpecificAbsorptionRateDefinition="IEC_WHOLE_BODY",
                                             SpecificAbsorptionRateValue=0.5),
        GradientOutputType="DB_DT", GradientOutput=20.0,
        OperatingModeSequence=_item(OperatingModeType="STATIC FIELD", OperatingMode="IEC_NORMAL"))
    shared.MREchoSequence = _item(EffectiveEchoTime=3.5)
    shared.MRModifierSequence = _item(
        InversionRecovery="NO", FlowCompensation="NONE", Spoiling="RF", T2Preparation="NO",
        SpectrallySelectedExcitation="NONE", SpatialPresaturation="NONE", PartialFourier="NO",
        ParallelAcquisition="NO")
    shared.MRImagingModifierSequence = _item(
        MagnetizationTransfer="NONE", BloodSignalNulling="NO", Tagging="NONE", TransmitterFrequency=63.6,
        PixelBandwidth=200.0)
    shared.MRReceiveCoilSequence = _item(ReceiveCoilName="HEAD", ReceiveCoilManufacturerName=None,
                                         ReceiveCoilType="VOLUME", QuadratureReceiveCoil="YES")
    shared.MRTransmitCoilSequence = _item(TransmitCoilName="BODY", TransmitCoilManufacturerName=None,
                                          TransmitCoilType="BODY")
    shared.MRFOVGeometrySequence = _item(
        InPlanePhaseEncodingDirection="ROW", MRAcquisitionFrequencyEncodingSteps=ds.Columns,
        MRAcquisitionPhaseEncodingStepsInPlane=ds.Rows, MRAcquisitionPhaseEncodingStepsOutOfPlane=frames,
        PercentSampling=100.0, PercentPhaseFieldOfView=100.0)
    shared.MRAveragesSequence = _item(NumberOfAverages=1.0)
    shared.FrameAnatomySequence = _item(
        FrameLaterality="U", AnatomicRegionSequence=_item(CodeValue="T-D1100", CodingSchemeDesignator="SRT",
                                                          CodeMeaning="Head"))
    shared.PixelValueTransformationSequence = _item(RescaleIntercept="0", RescaleSlope="1", RescaleType="US")
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for i in range(frames):
        item = Dataset()
        item.PlanePositionSequence = _item(ImagePositionPatient=["-40.00", "-40.00", _ds_text(i * thickness)])
        item.FrameContentSequence = _item(
            StackID="1", InStackPositionNumber=i + 1, DimensionIndexValues=[1, i + 1],
            FrameAcquisitionDateTime=acquired, FrameReferenceDateTime=acquired, FrameAcquisitionDuration=24.0)
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    return ds


def _encode(ds: Dataset, *, headerless: bool = False) -> bytes:
    buf = io.BytesIO()
    if headerless:
        # What some old modalities and export tools write: the bare dataset, implicit VR little endian,
        # no 128-byte preamble, no 'DICM', no file meta.
        pydicom.dcmwrite(buf, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    else:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        pydicom.dcmwrite(buf, ds, enforce_file_format=True)
        del ds.file_meta
    return buf.getvalue()
