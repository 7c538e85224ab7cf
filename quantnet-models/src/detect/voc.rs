//! Pascal VOC annotations: `<annotation>` XML files with the image's `<size>` and one `<object>`
//! per box (`<name>`, `<difficult>`, `<bndbox>` with `xmin`, `ymin`, `xmax`, `ymax` in pixels).
//!
//! Two folder layouts are read: VOC's own (`Annotations/*.xml`, `JPEGImages/`) and the plain one
//! of `../shared/data/detection-neon-trees` (`annotations/*.xml`, `images/`). The XML files
//! are also accepted next to their images. The image is the XML's `<filename>`. If no such file
//! exists, a file with the same stem and a JPEG or PNG extension is used: one of the neon-trees
//! files names a `.tif` that is shipped as `.png`.
//!
//! Boxes that reach outside the image are clipped to it. Boxes left empty after clipping are
//! skipped. Both are counted ([`VocSet::clipped`], [`VocSet::skipped`]), as VOC tooling warns
//! about them. Everything else is one error naming the file:
//! - a missing or malformed field;
//! - an image that cannot be found;
//! - a class outside a given class list;
//! - an annotation without objects.

use std::path::{Path, PathBuf};

use super::map::BoxXyxy;
use crate::error::{Error, Result};

/// One annotated box.
#[derive(Clone, Debug, PartialEq)]
pub struct VocObject {
    /// The class index in [`VocSet::classes`].
    pub class: usize,
    /// `[x_min, y_min, x_max, y_max]` in pixels, inside the image.
    pub bbox: BoxXyxy,
    /// VOC's `difficult` flag.
    pub difficult: bool,
}

/// One image and its boxes.
#[derive(Clone, Debug, PartialEq)]
pub struct VocImage {
    /// The image file.
    pub image: PathBuf,
    /// The annotation file it came from.
    pub annotation: PathBuf,
    /// The image's width and height, from the annotation.
    pub size: (u32, u32),
    /// Its boxes.
    pub objects: Vec<VocObject>,
}

/// A folder of VOC annotations and their images.
#[derive(Clone, Debug, PartialEq)]
pub struct VocSet {
    /// The class names; an object's `class` indexes this list.
    pub classes: Vec<String>,
    /// The images, in the sorted order of their annotation files.
    pub images: Vec<VocImage>,
    /// Boxes clipped to their image.
    pub clipped: usize,
    /// Boxes skipped because nothing was left after clipping.
    pub skipped: usize,
}

impl VocSet {
    /// Reads every annotation of `dir`. `classes` fixes the class list (VOC's 20 names, say):
    /// a name outside it is an error. Without it, the list is the sorted names found.
    ///
    /// # Errors
    /// [`Error::NotFound`] without annotation files; [`Error::Corrupt`] naming the file for
    /// everything described in the [module docs](self).
    pub fn load(dir: &Path, classes: Option<&[String]>) -> Result<Self> {
        let (xml_dir, image_dirs) = layout(dir);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&xml_dir)
            .map_err(|source| Error::Io {
                path: xml_dir.clone(),
                source,
            })?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("xml")))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Error::NotFound {
                dataset: "VOC annotations".into(),
                looked: xml_dir.display().to_string(),
                hint: "A VOC folder holds Annotations/*.xml and JPEGImages/, or annotations/ and \
                       images/, or the XML files next to their images."
                    .into(),
            });
        }
        let parsed = files
            .iter()
            .map(|f| parse(f))
            .collect::<Result<Vec<Parsed>>>()?;
        let classes: Vec<String> = match classes {
            Some(c) => c.to_vec(),
            None => {
                let mut names: Vec<String> = parsed
                    .iter()
                    .flat_map(|p| p.objects.iter().map(|o| o.name.clone()))
                    .collect();
                names.sort();
                names.dedup();
                names
            }
        };
        let (mut clipped, mut skipped) = (0, 0);
        let mut images = Vec::with_capacity(parsed.len());
        for (file, p) in files.iter().zip(parsed) {
            let corrupt = |reason: String| Error::Corrupt {
                path: file.clone(),
                reason,
            };
            let image = find_image(&image_dirs, &p.filename).ok_or_else(|| {
                corrupt(format!(
                    "its image {} is in none of {}",
                    p.filename,
                    image_dirs
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
            let (w, h) = (p.width as f32, p.height as f32);
            let mut objects = Vec::with_capacity(p.objects.len());
            for o in p.objects {
                let class = classes.iter().position(|c| *c == o.name).ok_or_else(|| {
                    corrupt(format!(
                        "unknown class `{}` (the classes are {})",
                        o.name,
                        classes.join(", ")
                    ))
                })?;
                let [x0, y0, x1, y1] = o.bbox;
                let inside = [
                    x0.clamp(0.0, w),
                    y0.clamp(0.0, h),
                    x1.clamp(0.0, w),
                    y1.clamp(0.0, h),
                ];
                if inside != o.bbox {
                    clipped += 1;
                }
                if inside[2] <= inside[0] || inside[3] <= inside[1] {
                    skipped += 1;
                    continue;
                }
                objects.push(VocObject {
                    class,
                    bbox: inside,
                    difficult: o.difficult,
                });
            }
            images.push(VocImage {
                image,
                annotation: file.clone(),
                size: (p.width, p.height),
                objects,
            });
        }
        Ok(Self {
            classes,
            images,
            clipped,
            skipped,
        })
    }

    /// Boxes in all, difficult ones included.
    pub fn boxes(&self) -> usize {
        self.images.iter().map(|i| i.objects.len()).sum()
    }
}

/// The annotation folder and the folders the images may be in.
fn layout(dir: &Path) -> (PathBuf, Vec<PathBuf>) {
    for (xml, images) in [("Annotations", "JPEGImages"), ("annotations", "images")] {
        if dir.join(xml).is_dir() {
            return (dir.join(xml), vec![dir.join(images), dir.join(xml)]);
        }
    }
    (dir.to_path_buf(), vec![dir.to_path_buf()])
}

fn find_image(dirs: &[PathBuf], filename: &str) -> Option<PathBuf> {
    let stem = Path::new(filename).file_stem()?.to_owned();
    for dir in dirs {
        let exact = dir.join(filename);
        if exact.is_file() {
            return Some(exact);
        }
        for ext in ["jpg", "jpeg", "png", "JPG", "JPEG", "PNG"] {
            let mut name = stem.clone();
            name.push(format!(".{ext}"));
            let other = dir.join(name);
            if other.is_file() {
                return Some(other);
            }
        }
    }
    None
}

struct ParsedObject {
    name: String,
    bbox: BoxXyxy,
    difficult: bool,
}

struct Parsed {
    filename: String,
    width: u32,
    height: u32,
    objects: Vec<ParsedObject>,
}

/// The text of the first `<tag>…</tag>` in `xml`, trimmed.
fn field<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(xml[start..end].trim())
}

/// The outer `<annotation …>…</annotation>` element's text: from the first opening tag (with
/// or without attributes) to the *last* closing one, since VOC's own files nest
/// `<source><annotation>PASCAL VOC2007</annotation></source>` inside it.
fn root(xml: &str) -> Option<&str> {
    let open = xml.find("<annotation")?;
    let start = open + xml[open..].find('>')? + 1;
    let end = xml.rfind("</annotation>")?;
    (end >= start).then(|| &xml[start..end])
}

fn parse(file: &Path) -> Result<Parsed> {
    let corrupt = |reason: String| Error::Corrupt {
        path: file.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(file).map_err(|source| Error::Io {
        path: file.to_path_buf(),
        source,
    })?;
    let root = root(&text)
        .ok_or_else(|| corrupt("no <annotation> element: not a VOC annotation".into()))?;
    let number = |xml: &str, tag: &str, what: &str| -> Result<f32> {
        let value = field(xml, tag).ok_or_else(|| corrupt(format!("{what}: no <{tag}>")))?;
        value
            .parse::<f32>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| corrupt(format!("{what}: <{tag}> is `{value}`, not a number")))
    };
    let filename = field(root, "filename")
        .filter(|f| !f.is_empty())
        .ok_or_else(|| corrupt("no <filename>".into()))?
        .to_string();
    let size = field(root, "size").ok_or_else(|| corrupt("no <size>".into()))?;
    let (width, height) = (
        number(size, "width", "size")?,
        number(size, "height", "size")?,
    );
    if width < 1.0 || height < 1.0 {
        return Err(corrupt(format!("size {width}×{height}: empty image")));
    }
    let mut objects = Vec::new();
    let mut rest = root;
    while let Some(start) = rest.find("<object>") {
        let body = &rest[start + "<object>".len()..];
        let end = body
            .find("</object>")
            .ok_or_else(|| corrupt(format!("object {}: no </object>", objects.len() + 1)))?;
        let object = &body[..end];
        rest = &body[end..];
        let what = format!("object {}", objects.len() + 1);
        let name = field(object, "name")
            .filter(|n| !n.is_empty())
            .ok_or_else(|| corrupt(format!("{what}: no <name>")))?
            .to_string();
        let bndbox =
            field(object, "bndbox").ok_or_else(|| corrupt(format!("{what}: no <bndbox>")))?;
        let bbox = [
            number(bndbox, "xmin", &what)?,
            number(bndbox, "ymin", &what)?,
            number(bndbox, "xmax", &what)?,
            number(bndbox, "ymax", &what)?,
        ];
        let difficult = match field(object, "difficult") {
            None | Some("0") => false,
            Some("1") => true,
            Some(other) => {
                return Err(corrupt(format!(
                    "{what}: <difficult> is `{other}`, not 0 or 1"
                )));
            }
        };
        objects.push(ParsedObject {
            name,
            bbox,
            difficult,
        });
    }
    if objects.is_empty() {
        return Err(corrupt("no <object>: an annotation without boxes".into()));
    }
    Ok(Parsed {
        filename,
        width: width as u32,
        height: height as u32,
        objects,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xml(filename: &str, objects: &str) -> String {
        format!(
            "<annotation><filename>{filename}</filename><size><width>100</width>\
             <height>50</height><depth>3</depth></size>{objects}</annotation>"
        )
    }

    fn object(name: &str, b: [i32; 4], difficult: u8) -> String {
        format!(
            "<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>\
             <xmin>{}</xmin><ymin>{}</ymin><xmax>{}</xmax><ymax>{}</ymax></bndbox></object>",
            b[0], b[1], b[2], b[3]
        )
    }

    fn folder(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("quantnet-voc-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("Annotations")).unwrap();
        std::fs::create_dir_all(dir.join("JPEGImages")).unwrap();
        dir
    }

    #[test]
    fn reads_boxes_classes_difficult_flags_and_clips() {
        let dir = folder("read");
        let objects = [
            object("tree", [10, 5, 20, 15], 0),
            object("car", [90, 40, 120, 60], 1),
            object("tree", [-5, 60, 10, 70], 0),
        ]
        .concat();
        std::fs::write(dir.join("Annotations/a.xml"), xml("a.jpg", &objects)).unwrap();
        std::fs::write(dir.join("JPEGImages/a.jpg"), b"").unwrap();
        // The XML names a .tif that is shipped as .png.
        std::fs::write(
            dir.join("Annotations/b.xml"),
            xml("b.tif", &object("car", [0, 0, 5, 5], 0)),
        )
        .unwrap();
        std::fs::write(dir.join("JPEGImages/b.png"), b"").unwrap();
        // VOC's own files nest an <annotation> in <source> before <size>, and some tools
        // write attributes on the root; a dotted stem keeps its dots when the extension is
        // swapped.
        let voc = xml("c.v2.tif", &object("car", [1, 1, 4, 4], 0)).replace(
            "<annotation><filename>",
            "<annotation verified=\"yes\"><source><database>The VOC2007 Database</database>\
             <annotation>PASCAL VOC2007</annotation></source><filename>",
        );
        std::fs::write(dir.join("Annotations/c.xml"), voc).unwrap();
        std::fs::write(dir.join("JPEGImages/c.v2.jpg"), b"").unwrap();
        let set = VocSet::load(&dir, None).unwrap();
        assert_eq!(set.classes, vec!["car", "tree"]);
        assert_eq!(set.images.len(), 3);
        let a = &set.images[0];
        assert_eq!(a.image, dir.join("JPEGImages/a.jpg"));
        assert_eq!(a.size, (100, 50));
        // The car reaches outside (120 > 100, 60 > 50): clipped. The last tree lies below the
        // image (y 60..70 > 50): nothing left, skipped.
        assert_eq!(
            a.objects,
            vec![
                VocObject {
                    class: 1,
                    bbox: [10.0, 5.0, 20.0, 15.0],
                    difficult: false
                },
                VocObject {
                    class: 0,
                    bbox: [90.0, 40.0, 100.0, 50.0],
                    difficult: true
                },
            ]
        );
        assert_eq!((set.clipped, set.skipped), (2, 1));
        assert_eq!(set.images[1].image, dir.join("JPEGImages/b.png"));
        assert_eq!(set.images[2].image, dir.join("JPEGImages/c.v2.jpg"));
        assert_eq!(set.images[2].size, (100, 50));
        assert_eq!(set.boxes(), 4);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_annotations_are_one_error_naming_the_file() {
        let tree = object("tree", [1, 1, 5, 5], 0);
        let cases = [
            (xml("a.jpg", ""), "no <object>"),
            (
                xml("missing.jpg", &tree),
                "its image missing.jpg is in none of",
            ),
            (
                xml("a.jpg", &object("cat", [1, 1, 5, 5], 0)),
                "unknown class `cat`",
            ),
            (
                xml(
                    "a.jpg",
                    &tree.replace("<xmax>5</xmax>", "<xmax>five</xmax>"),
                ),
                "not a number",
            ),
            (
                xml("a.jpg", &tree.replace("<difficult>0", "<difficult>2")),
                "not 0 or 1",
            ),
            ("<html></html>".to_string(), "not a VOC annotation"),
        ];
        for (k, (text, expected)) in cases.iter().enumerate() {
            let dir = folder(&format!("bad{k}"));
            std::fs::write(dir.join("JPEGImages/a.jpg"), b"").unwrap();
            let file = dir.join("Annotations/x.xml");
            std::fs::write(&file, text).unwrap();
            let classes = ["tree".to_string()];
            let err = VocSet::load(&dir, Some(&classes)).unwrap_err().to_string();
            assert!(err.contains(expected), "{expected}: {err}");
            assert!(err.contains("x.xml"), "names the file: {err}");
            std::fs::remove_dir_all(&dir).unwrap();
        }
        let empty = folder("empty");
        let err = VocSet::load(&empty, None).unwrap_err().to_string();
        assert!(err.contains("Annotations"), "{err}");
        std::fs::remove_dir_all(&empty).unwrap();
    }

    #[test]
    #[ignore = "needs ../shared/data/detection-neon-trees; .ci/run runs it"]
    fn reads_the_neon_tree_tiles() {
        let dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/detection-neon-trees");
        assert!(
            dir.join("annotations").is_dir(),
            "this test needs the neon-trees tiles in {}",
            dir.display()
        );
        let set = VocSet::load(&dir, None).unwrap();
        // The README's table: 61 + 37 + 279 = 377 boxes, all inside their images.
        assert_eq!(set.classes, vec!["Alive", "Dead", "Tree"]);
        let counts: Vec<usize> = set.images.iter().map(|i| i.objects.len()).collect();
        assert_eq!(counts, vec![279, 61, 37]);
        assert_eq!(set.boxes(), 377);
        assert_eq!((set.clipped, set.skipped), (0, 0));
        // OSBS_029.xml names OSBS_029.tif; the PNG is found.
        assert!(set.images[1].image.ends_with("images/OSBS_029.png"));
        let soap = &set.images[2];
        let dead = soap
            .objects
            .iter()
            .filter(|o| set.classes[o.class] == "Dead")
            .count();
        assert_eq!((dead, soap.objects.len() - dead), (28, 9));
        assert_eq!(soap.size, (400, 400));
        assert_eq!(soap.objects[0].bbox, [149.0, 105.0, 173.0, 129.0]);
    }
}
